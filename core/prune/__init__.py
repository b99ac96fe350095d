"""Pruning: magnitude, Wanda and SparseGPT (unstructured and N:M), structured removal, recovery.

* ``spec``       - ``PruneSpec``: method, sparsity or threshold, pattern, scope (validated).
* ``masks``      - pure tensor functions: threshold / unstructured / per-row / N:M masks, Wanda scores.
* ``sparsegpt``  - SparseGPT on one matrix (pure; the OBS column sweep of ``core.calibration.hessian``).
* ``apply``      - ``prune_``: walk the decoder blocks' linear layers and prune each.
* ``structured`` - remove whole MLP channels, heads or blocks: the model really shrinks.
* ``recovery``   - a short fine-tune with the zeros held fixed.
* ``preview``    - sparsity at any magnitude threshold, fast enough for a slider.
* ``step``       - ``PruneStep``: the recipe step.
"""

from core.prune.apply import LayerReport, PruneReport, prune, prune_, selected_layers
from core.prune.masks import (
    fraction_count,
    global_magnitude_masks,
    nm_mask,
    row_mask,
    threshold_mask,
    unstructured_mask,
    wanda_scores,
)
from core.prune.preview import ThresholdPreview
from core.prune.recovery import finetune_masked_
from core.prune.sparsegpt import sparsegpt_prune
from core.prune.spec import METHODS, PruneSpec, parse_pattern

__all__ = ["METHODS", "LayerReport", "PruneReport", "PruneSpec", "ThresholdPreview", "finetune_masked_",
           "fraction_count", "global_magnitude_masks", "nm_mask", "parse_pattern", "prune", "prune_", "row_mask",
           "selected_layers", "sparsegpt_prune", "threshold_mask", "unstructured_mask", "wanda_scores"]
