"""Calibration: what data-aware methods learn from activations.

* ``spec``    - ``CalibrationSpec``: which text, how many windows of how many tokens, the seed.
* ``hessian`` - pure algebra on tensors: the running X^T X accumulator, the inverse-Hessian factor, and
  the optimal-brain-surgeon column sweep that GPTQ and SparseGPT share.
* ``walk``    - the block-by-block walk with calibration data flowing through already-compressed blocks.
* ``observe`` - whole-model forward passes whose hooks reduce what chosen modules see to statistics.

This package is the only place in ``core`` that registers forward hooks.
"""

from core.calibration.hessian import (
    HessianAccumulator,
    drop_dead_inputs_,
    inverse_hessian_factor,
    obs_column_sweep,
    reconstruction_error,
)
from core.calibration.spec import CalibrationSpec
from core.calibration.walk import (
    BlockInput,
    capture_block_inputs,
    check_calibration,
    collect_statistics,
    sequential_walk,
)

__all__ = ["BlockInput", "CalibrationSpec", "HessianAccumulator", "capture_block_inputs", "check_calibration",
           "collect_statistics", "drop_dead_inputs_", "inverse_hessian_factor", "obs_column_sweep",
           "reconstruction_error", "sequential_walk"]
