"""``python -m core.cli``: the same as the ``squeezelab`` console script."""

from core.cli.entry import main

raise SystemExit(main())
