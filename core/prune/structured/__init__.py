"""Structured pruning that really shrinks a causal LM: fewer MLP channels, attention heads or blocks.

* ``spec``    - ``StructuredSpec`` (target, fraction or named layers, ranking) and its report.
* ``scores``  - pure tensor functions: unit importances, counts, which units go.
* ``surgery`` - cutting units out of linear layers and keeping the config in step.
* ``apply``   - ``prune_structured_``: rank, cut, update the config; ``params_removed`` previews the size.
"""

from core.prune.structured.apply import params_removed, prune_structured, prune_structured_
from core.prune.structured.scores import (
    channel_scores,
    evenly_spaced_middle,
    group_activation_scores,
    group_scores,
    lowest_indices,
    removal_count,
    residual_scores,
)
from core.prune.structured.spec import IMPORTANCES, TARGETS, StructuredReport, StructuredSpec

__all__ = ["IMPORTANCES", "TARGETS", "StructuredReport", "StructuredSpec", "channel_scores", "evenly_spaced_middle",
           "group_activation_scores", "group_scores", "lowest_indices", "params_removed", "prune_structured",
           "prune_structured_", "removal_count", "residual_scores"]
