"""Which text a recipe's ``default`` means for its model, and a warning when calibration or training text
comes from another domain than the evaluation text.

A model reference decides what ``default`` means (``ModelSource.default_text`` for evaluation,
``default_calibration_text`` for calibration and training): the sample models' held-out and training
text (Python source), WikiText-2's test and validation splits for other models. Calibrating on one
domain and evaluating on another is allowed, but its figures then also measure how well the
compression transfers across domains, so the run's notes (and the app) say so.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from core import data

if TYPE_CHECKING:
    from core.models.source import ModelSource
    from core.recipe.recipe import Recipe

PYTHON_SOURCE = "Python source"
WIKITEXT = "WikiText-2 (Wikipedia articles)"
# named sources and the domain of their text; a user's own file is of a domain nobody can tell
NAMED_DOMAINS = {
    data.SAMPLE_SOURCE: PYTHON_SOURCE, data.SAMPLE_TRAIN_SOURCE: PYTHON_SOURCE,
    data.WIKITEXT2_SOURCE: WIKITEXT, data.WIKITEXT2_VALID_SOURCE: WIKITEXT,
    "wikitext-2": WIKITEXT, "wikitext": WIKITEXT,
}


def resolved_source(source: str, default: str) -> str:
    """``source`` with ``default`` put in for the name ``default`` (what a model's ``default`` means)."""
    name = source.strip() if source else data.DEFAULT_SOURCE
    return default if name == data.DEFAULT_SOURCE else name


def text_domain(source: str) -> str | None:
    """The domain of a resolved text source, or None when it cannot be told (a file of the user's own)."""
    if source in NAMED_DOMAINS:
        return NAMED_DOMAINS[source]
    path = Path(source)
    # WikiText's own files (wiki.valid.tokens, wiki.test.raw, the parquet splits in a wikitext-2 folder)
    if path.name.startswith("wiki.") or any(part.lower().startswith("wikitext") for part in path.parts[-3:-1]):
        return WIKITEXT
    return None


def domain_warning(role: str, source: str, eval_source: str) -> str | None:
    """A warning when the ``role`` ("calibration", "training") text and the evaluation text are known to
    come from different domains; None when they share one or either cannot be told."""
    mine, theirs = text_domain(source), text_domain(eval_source)
    if mine is None or theirs is None or mine == theirs:
        return None
    return (f"the {role} text {source!r} ({mine}) is from another domain than the evaluation text "
            f"{eval_source!r} ({theirs}): the perplexity also measures how well the compression transfers "
            f"across domains, and compares only with runs whose {role} text was the same")


def text_notes(recipe: Recipe, source: ModelSource) -> list[str]:
    """The domain warnings of a recipe on the model ``source``: its calibration text (when a step reads it)
    and every step's own training text (a distill step's ``text``) against the evaluation text."""
    evaluated = resolved_source(recipe.evaluation.text, source.default_text)
    trained = []
    if any(step.parsed.needs_calibration for step in recipe.steps):
        trained.append(("calibration", recipe.calibration.text))
    trained += [("training", step.parsed.text) for step in recipe.steps
                if isinstance(getattr(step.parsed, "text", None), str)]
    warnings = (domain_warning(role, resolved_source(text, source.default_calibration_text), evaluated)
                for role, text in trained)
    return list(dict.fromkeys(warning for warning in warnings if warning))
