"""``QuantizeSpec``: what to quantize and how, validated before any model is touched.

* rtn          - round to nearest with min-max scales (per channel or per group); no data.
* gptq         - Frantar et al. 2022: quantize column by column and compensate with H^-1.
* awq          - Lin et al. 2023: activation-aware scales searched per group of layers and folded into
                 the preceding norm or linear, exactly; then RTN (or GPTQ with ``rounding: gptq``).
* int8_dynamic - 8-bit symmetric per-channel weights (codes within +-64 on the CPU, +-127 on CUDA; see
                 ``QuantizeSpec.scheme_on``), stored as int8, and int8
                 activations quantized per token at run time, on an integer matmul kernel (weights
                 rounded by RTN, or GPTQ with ``rounding: gptq``).
* fp16 / bf16  - the whole model cast to half precision (the simplest baseline).

Mixed precision: ``overrides`` give bits / group size / symmetry per layer-name pattern, or
``skip: true`` to keep a layer as it is; the first matching override wins. A ``budget`` (rtn, gptq,
awq) lets the planner (``core.plan``) write those overrides before the run; ``planned`` then records
what it predicted (informational: a recipe with ``planned`` and no ``budget`` runs without planning).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from core.checks import check_keys, checked_params, is_count, name_patterns, require, require_mapping
from core.plan.menu import QUANT_METHODS, parse_budget
from core.quantize.kernels import FBGEMM_SAFE_RADIUS, KERNELS
from core.quantize.scheme import QuantScheme

METHODS = ("rtn", "gptq", "awq", "int8_dynamic", "fp16", "bf16")
CAST_METHODS = ("fp16", "bf16")
SMOOTH_DEFAULT_ALPHA = 0.5
_OVERRIDE_KEYS = ("pattern", "bits", "group_size", "symmetric", "skip")


@dataclass(frozen=True)
class Override:
    """Per-layer settings for layers whose name matches ``pattern`` (shell style, e.g. ``*.self_attn.*``)."""

    pattern: str
    bits: int | None = None
    group_size: int | None = None
    symmetric: bool | None = None
    skip: bool = False

    @classmethod
    def from_dict(cls, raw: Any) -> Override:
        require_mapping(raw, "an override", "{pattern: '*.mlp.*', bits: 4}")
        require("pattern" in raw, f"an override needs a pattern, e.g. {{pattern: '*.mlp.*', bits: 4}}; got {raw!r}")
        check_keys(raw, _OVERRIDE_KEYS, "override key")
        require(isinstance(raw["pattern"], str) and raw["pattern"], "an override's pattern must be a non-empty text")
        return cls(**raw)

    def scheme(self, base: QuantScheme) -> QuantScheme:
        """``base`` with this override's settings on top (validated)."""
        changes = {k: getattr(self, k) for k in ("bits", "symmetric") if getattr(self, k) is not None}
        if "group_size" in self.__dict__ and self.group_size is not None:
            changes["group_size"] = self.group_size or None  # 0 means per channel
        # a narrowed code grid belongs to the base's bits and kernel; other bits use their full range
        same_grid = changes.get("bits", base.bits) == base.bits and changes.get("symmetric", base.symmetric)
        return replace(base, **changes, code_radius=base.code_radius if same_grid else None)


def _override_label(override: Override) -> str:
    """'*.self_attn.* w8 g32' or 'model.layers.0.* skip': an override as a label names it."""
    if override.skip:
        return f"{override.pattern} skip"
    parts = [f"w{override.bits}"] if override.bits is not None else []
    if override.group_size is not None:
        parts.append(f"g{override.group_size}" if override.group_size else "per-channel")
    if override.symmetric is not None:
        parts.append("sym" if override.symmetric else "asym")
    return " ".join([override.pattern, *parts])


@dataclass(frozen=True)
class QuantizeSpec:
    """What to quantize and how. ``group_size`` None (or 0) means one scale per output channel.

    In a recipe::

        steps:
          - quantize: {method: gptq, bits: 4, group_size: 64, symmetric: false,
                       overrides: [{pattern: "*.self_attn.*", bits: 8}, {pattern: "model.layers.0.*", skip: true}]}
    """

    method: str = "rtn"
    bits: int = 4
    group_size: int | None = None
    symmetric: bool = True
    # gptq: columns in order of decreasing H_jj, groups kept static (the stored layout is RTN's); on by
    # default as in llm-compressor: SmolLM2 4-bit g64 symmetric 42.33 -> 39.07 (BENCHMARKS section 5)
    act_order: bool = True
    blocksize: int = 128  # gptq: columns updated together
    percdamp: float = 0.01  # gptq: damping, as a fraction of mean(diag(H))
    kernel: str = "auto"  # auto | dequant | int8_weight_only | int4_weight_only | int8_dynamic
    lm_head: bool = False  # also quantize the output projection (RTN); a tied input embedding follows it
    rounding: str = "rtn"  # int8_dynamic and awq: how the weights are rounded (rtn | gptq)
    awq_grid: int = 20  # awq: ratios tried per group of layers
    # int8_dynamic only: SmoothQuant migration strength alpha (0 = off); None = 0.5 when there is
    # calibration text, off (with a note) when there is none
    smooth: float | None = None
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    overrides: tuple[Override, ...] = field(default_factory=tuple)
    # the planner's input (avg_bits | size_mb | max_ppl and the menu, see core.plan.menu), and its output
    budget: dict | None = None
    planned: dict | None = None

    def __post_init__(self) -> None:
        require(self.method in METHODS, f"unknown quantization method {self.method!r}; choose one of "
                                         f"{', '.join(METHODS)}")
        if self.group_size == 0:
            object.__setattr__(self, "group_size", None)
        if self.method == "int8_dynamic":  # the kernel's weight format is fixed
            object.__setattr__(self, "bits", 8)
            object.__setattr__(self, "group_size", None)
            object.__setattr__(self, "symmetric", True)
        self.scheme  # noqa: B018 - validates bits / group size / symmetric
        require(self.kernel == "auto" or self.kernel in KERNELS,
                f"unknown kernel {self.kernel!r}; choose auto or one of {', '.join(KERNELS)}")
        require(self.rounding in ("rtn", "gptq"), f"rounding must be rtn or gptq, got {self.rounding!r}")
        require(self.smooth is None or (isinstance(self.smooth, int | float) and 0 <= self.smooth < 1),
                f"smooth (SmoothQuant alpha) must be in [0, 1), e.g. 0.5, or 0 for off; got {self.smooth!r}")
        require(isinstance(self.blocksize, int) and self.blocksize > 0,
                f"blocksize must be a whole number > 0, got {self.blocksize!r}")
        require(isinstance(self.percdamp, int | float) and 0 < self.percdamp < 1,
                f"percdamp must be in (0, 1), e.g. 0.01; got {self.percdamp!r}")
        for name in ("include", "exclude"):
            object.__setattr__(self, name, name_patterns(getattr(self, name), name) if getattr(self, name) else ())
        overrides = tuple(o if isinstance(o, Override) else Override.from_dict(o) for o in self.overrides)
        object.__setattr__(self, "overrides", overrides)
        for override in overrides:
            override.scheme(self.scheme)
        require(is_count(self.awq_grid, 1), f"awq_grid must be a whole number >= 1, got {self.awq_grid!r}")
        if self.budget is not None:
            require(self.method in QUANT_METHODS and not self.overrides,
                    f"a quantize budget plans methods {', '.join(QUANT_METHODS)} and writes the overrides itself; "
                    f"got method {self.method!r} with {len(self.overrides)} overrides")
            require(not self.lm_head, "a quantize budget plans the decoder blocks' linear layers; lm_head: true would "
                                      "round the output projection outside the plan and its size; leave it off")
            parse_budget(self.budget, "quantize", self.method, self.group_size, self.symmetric)
        require(self.planned is None or isinstance(self.planned, dict), "planned must be a mapping (the planner's)")

    @property
    def scheme(self) -> QuantScheme:
        """The scheme for a CPU model (see ``scheme_on``)."""
        return self.scheme_on("cpu")

    def scheme_on(self, device_type: str) -> QuantScheme:
        """The scheme the kernels of ``device_type`` ("cpu", "cuda", ...) want.

        int8_dynamic on the CPU keeps weight codes within +-64 so fbgemm can quantize activations to 8
        bits, not 7 (SmolLM2, cpu-small: +7.0% -> +3.2% perplexity over fp32; BENCHMARKS section 5).
        CUDA's ``torch._int_mm`` accumulates in int32 without pair sums, so there the full +-127 grid
        keeps the extra bit. A CUDA-quantized model moved to the CPU stays correct: fbgemm then sees
        codes beyond 64 and falls back to 7-bit activations (``QuantLinear`` checks the codes).
        """
        radius = FBGEMM_SAFE_RADIUS if self.method == "int8_dynamic" and device_type != "cuda" else None
        return QuantScheme(self.bits, self.group_size, self.symmetric, radius)

    @property
    def uses_gptq(self) -> bool:
        return self.method == "gptq" or (self.method in ("int8_dynamic", "awq") and self.rounding == "gptq")

    @property
    def smooth_alpha(self) -> float:
        """SmoothQuant strength this spec asks for (0: none)."""
        if self.method != "int8_dynamic":
            return 0.0
        return SMOOTH_DEFAULT_ALPHA if self.smooth is None else float(self.smooth)

    @property
    def uses_calibration(self) -> bool:
        return self.uses_gptq or self.smooth_alpha > 0 or self.method == "awq" or self.budget is not None

    @property
    def needs_calibration(self) -> bool:
        """Whether the step reads calibration text (GPTQ's Hessians, SmoothQuant's activation ranges)."""
        return self.uses_calibration

    @property
    def label(self) -> str:
        """Short description for charts and tables, e.g. 'gptq w4 g64 asym', 'rtn w4 g32 sym +lm_head' or
        'int8 dynamic (w8a8 per-token) smooth 0.5'. Two specs that quantize differently get different labels:
        every setting away from its default is named (overrides by pattern, in order)."""
        if self.method in CAST_METHODS:
            return self.method
        if self.method == "int8_dynamic":
            core = "int8 dynamic (w8a8 per-token)" + (" gptq" if self.rounding == "gptq" else "")
            core += f" smooth {self.smooth_alpha:g}" if self.smooth_alpha else " no smoothing"
        elif self.budget is not None:
            core = f"{self.method} plan {parse_budget(self.budget, 'quantize', self.method)[0].label()}"
        elif self.planned:  # the overrides are the plan's: its budget and atlas name them, shorter
            core = f"{self._method_label} planned {self.planned.get('budget_label', '')}".rstrip()
            core += f" (atlas {self.planned['atlas']})" if self.planned.get("atlas") else ""
        else:
            group = f"g{self.group_size}" if self.group_size else "per-channel"
            core = f"{self._method_label} w{self.bits} {group} {'sym' if self.symmetric else 'asym'}"
        return " ".join([core, *self._label_extras()])

    @property
    def _method_label(self) -> str:
        return f"awq+{self.rounding}" if self.method == "awq" else self.method

    def _label_extras(self) -> list[str]:
        """The settings a label names besides method and scheme, each only when it is not the default."""
        default = QuantizeSpec(method=self.method)
        extras = ["+lm_head"] if self.lm_head else []
        if self.uses_gptq and not self.act_order:
            extras.append("no act-order")
        for name in ("kernel", "blocksize", "percdamp"):
            if getattr(self, name) != getattr(default, name) and (name == "kernel" or self.uses_gptq):
                extras.append(f"{name} {getattr(self, name)}")
        if self.method == "awq" and self.awq_grid != default.awq_grid:
            extras.append(f"awq_grid {self.awq_grid}")
        for name in ("include", "exclude"):
            if getattr(self, name) != getattr(default, name):
                extras.append(f"{name} {','.join(getattr(self, name))}")
        if self.overrides and not self.planned:
            extras.append("overrides [" + "; ".join(_override_label(o) for o in self.overrides) + "]")
        return extras

    def scheme_for(self, name: str, device_type: str = "cpu") -> QuantScheme | None:
        """The scheme of layer ``name`` on a ``device_type`` model (None: left as it is)."""
        base = self.scheme_on(device_type)
        for override in self.overrides:
            if fnmatch.fnmatch(name, override.pattern):
                return None if override.skip else override.scheme(base)
        return base

    def as_dict(self) -> dict:
        values = asdict(self)
        values["include"], values["exclude"] = list(self.include), list(self.exclude)
        values["overrides"] = [{k: v for k, v in asdict(o).items() if v is not None and v is not False}
                               for o in self.overrides]
        return values

    @classmethod
    def from_dict(cls, params: Mapping) -> QuantizeSpec:
        """Build from a recipe's ``quantize:`` mapping, e.g. ``{method: gptq, bits: 4, group_size: 64}``."""
        values = checked_params(cls, params, "quantize")
        values["overrides"] = tuple(values.get("overrides") or ())
        return cls(**values)
