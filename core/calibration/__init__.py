"""Calibration: what data-aware methods learn from activations.

* ``spec``    - ``CalibrationSpec``: which text, how many windows of how many tokens, the seed.
* ``hessian`` - pure algebra on tensors: the running X^T X accumulator, the inverse-Hessian factor, and
  the optimal-brain-surgeon column sweep that GPTQ and SparseGPT share.
* ``walk``    - the block-by-block walk with calibration data flowing through already-compressed blocks.
* ``observe`` - whole-model forward passes whose hooks reduce what chosen modules see to statistics.

This package is the only place in ``core`` that registers forward hooks. Its own namespace offers the
pure parts only, so importing the algebra never brings in a hook: import the walk from
``core.calibration.walk`` and the observers from ``core.calibration.observe``.
"""

from core.calibration.hessian import (
    HessianAccumulator,
    drop_dead_inputs_,
    inverse_hessian_factor,
    obs_column_sweep,
    reconstruction_error,
)
from core.calibration.spec import CalibrationSpec

__all__ = ["CalibrationSpec", "HessianAccumulator", "drop_dead_inputs_", "inverse_hessian_factor", "obs_column_sweep",
           "reconstruction_error"]
