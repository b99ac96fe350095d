"""Knowledge distillation: a student learns the frozen teacher's softened next-token distribution.

* ``spec``     - ``DistillSpec``: student, teacher, temperature, alpha, schedule, data (validated).
* ``loss``     - pure loss terms: T²-scaled KL, next-token cross-entropy, hidden-state MSE.
* ``students`` - layer-dropped and width-reduced students, loaded ones, the vocabulary check.
* ``train``    - the training loop: AdamW, warm-up + cosine, accumulation, clipping, best checkpoint.
* ``qat``      - a quantized student trains through its own grid and is re-packed at the end.
* ``step``     - ``DistillStep``: the recipe step.
"""

from core.distill.loss import LossParts, distill_loss, hidden_mse, kd_kl, next_token_ce
from core.distill.spec import BUILT_IN_STUDENTS, HOLDOUT, DistillSpec
from core.distill.step import DistillStep, run_step, training_data
from core.distill.students import (
    VocabularyMismatchError,
    build_student_,
    check_compatible,
    evenly_spaced_layers,
    kept_layers,
    load_student,
)
from core.distill.train import DistillReport, StepRecord, distill_, lr_at

__all__ = ["BUILT_IN_STUDENTS", "HOLDOUT", "DistillReport", "DistillSpec", "DistillStep", "LossParts", "StepRecord",
           "VocabularyMismatchError", "build_student_", "check_compatible", "distill_", "distill_loss",
           "evenly_spaced_layers", "hidden_mse", "kd_kl", "kept_layers", "load_student", "lr_at", "next_token_ce",
           "run_step", "training_data"]
