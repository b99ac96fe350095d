"""The bundled sample models (a tiny teacher and student) and the script that trains them."""
