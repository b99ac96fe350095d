"""Measuring: quality on fixed windows, size as stored, speed at batch 1, and the decode loop that times it.

* ``spec``    - ``EvalSpec``: text, windows, seqlen, whether to time speed.
* ``quality`` - perplexity, top-1 accuracy, agreement with and KL to a base model.
* ``size``    - parameters, non-zeros, bytes as stored (packed codes count as packed).
* ``latency`` - prefill and decode speed with a KV cache, peak memory.
* ``decode``  - a static-KV-cache decode loop for Llama-style models.
* ``measure`` - one evaluation of a loaded model as a recipe asks for it.
"""

from core.evaluate.latency import LatencyMetrics, measure_latency
from core.evaluate.measurement import Measurement, eval_windows, fit_to_context, kernel_label, measure
from core.evaluate.quality import QualityMetrics, WindowScore, evaluate_quality, score_batch
from core.evaluate.size import SizeMetrics, measure_size
from core.evaluate.spec import EvalSpec

__all__ = ["EvalSpec", "LatencyMetrics", "Measurement", "QualityMetrics", "SizeMetrics", "WindowScore",
           "eval_windows", "evaluate_quality", "fit_to_context", "kernel_label", "measure", "measure_latency",
           "measure_size", "score_batch"]
