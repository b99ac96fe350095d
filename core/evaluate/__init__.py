"""Measuring: quality on fixed windows, size as stored, speed at batch 1, and the decode loop that times it.

* ``spec``    - ``EvalSpec``: text, windows, seqlen, whether to time speed.
* ``quality`` - perplexity, top-1 accuracy, agreement with and KL to a base model.
* ``intervals`` - 95% intervals over windows: a perplexity's, and the paired one against a base (pure math).
* ``size``    - parameters, non-zeros, bytes as stored (packed codes count as packed).
* ``latency`` - prefill and decode speed with a KV cache, peak memory.
* ``decode``  - a static-KV-cache decode loop for Llama-style models.
* ``measure`` - one evaluation of a loaded model as a recipe asks for it.
* ``report``  - how a figure is said (CLI and dashboard): interval, spread of runs, verdict against the base.
"""

from core.evaluate import report
from core.evaluate.intervals import (
    PairedComparison,
    PerplexityInterval,
    mean_interval,
    paired_comparison,
    perplexity_interval,
    t_quantile,
)
from core.evaluate.latency import LatencyMetrics, SpeedRatio, busy_note, measure_latency, speed_ratio
from core.evaluate.measurement import Measurement, eval_windows, fit_to_context, kernel_label, measure
from core.evaluate.quality import QualityMetrics, WindowScore, evaluate_quality, score_batch
from core.evaluate.size import SizeMetrics, measure_size
from core.evaluate.spec import EvalSpec

__all__ = ["EvalSpec", "LatencyMetrics", "Measurement", "PairedComparison", "PerplexityInterval", "QualityMetrics",
           "SizeMetrics", "SpeedRatio", "WindowScore", "busy_note", "eval_windows", "evaluate_quality",
           "fit_to_context", "kernel_label", "mean_interval", "measure", "measure_latency", "measure_size",
           "paired_comparison", "perplexity_interval", "report", "score_batch", "speed_ratio", "t_quantile"]
