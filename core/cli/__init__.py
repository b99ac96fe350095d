"""The ``squeezelab`` command line: eval | prune | quantize | distill | run | export | history | app | build-samples.

* ``parser``   - the argument parser; one subcommand per technique of ``core.recipe.steps.STEPS``.
* ``commands`` - each command as a recipe (or a store query) and its run.
* ``output``   - progress on stderr, the result row as text or JSON.
* ``entry``    - ``main``: exit codes 0 (success), 2 (bad input, a message), 1 (internal error, a traceback).
"""

from core.cli.entry import main
from core.cli.parser import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_OK

__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERNAL", "EXIT_OK", "main"]
