"""``ExportSpec`` (a recipe's ``export:`` section, validated) and ``ExportResult`` (what an export did).

In a recipe::

    export: {format: gguf, path: out/model, gguf_type: Q4_0, zip: true}   # hf | compressed-tensors | gguf
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from core.checks import check_keys, require, require_mapping

FORMATS = ("hf", "compressed-tensors", "gguf")
DTYPES = ("auto", "fp32", "fp16", "bf16")
GGUF_TYPES = ("auto", "F32", "F16", "Q8_0", "Q4_0", "Q4_1")


@dataclass(frozen=True)
class ExportSpec:
    """Where and how to export; a recipe's ``export:`` mapping, e.g. ``{format: gguf, path: out/, gguf_type: Q4_0}``."""

    format: str = "hf"
    path: str | None = None  # the folder to create (None: the result's artifact folder in the store)
    gguf_type: str = "auto"  # gguf: auto | F32 | F16 | Q8_0 | Q4_0 | Q4_1 (auto: the exact type of each layer)
    requantize: bool = False  # gguf: re-round layers the requested type cannot hold exactly (lossy)
    sparse: bool | None = None  # hf: pruned weights as bitmask + values; None: where that is smaller
    dtype: str = "auto"  # hf / compressed-tensors: dtype of float tensors (auto: the model's; fp16 if quantized)
    zip: bool = False  # also write <path>.zip (streamed from disk by the app's download button)
    overwrite: bool = False  # replace an existing folder at path
    check_windows: int = 8  # evaluation windows scored before export and after reload (0: all)
    tolerance: float = 0.005  # relative perplexity difference the check accepts

    def __post_init__(self) -> None:
        require(self.format in FORMATS, f"unknown export format {self.format!r}; choose one of {', '.join(FORMATS)}")
        require(self.path is None or (isinstance(self.path, str) and self.path.strip() != ""),
                f"export path must be a folder path, got {self.path!r}")
        require(self.gguf_type in GGUF_TYPES, f"unknown gguf_type {self.gguf_type!r}; choose one of "
                                               f"{', '.join(GGUF_TYPES)}")
        require(self.format == "gguf" or (self.gguf_type == "auto" and not self.requantize),
                "gguf_type and requantize apply to format gguf only")
        require(self.dtype in DTYPES, f"unknown export dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        require(self.format != "gguf" or self.dtype == "auto", "format gguf takes gguf_type (F32, F16, Q8_0, ...), "
                                                                "not dtype")
        require(self.sparse in (None, True, False), f"sparse must be auto, true or false, got {self.sparse!r}")
        require(self.format == "hf" or not self.sparse,
                "sparse storage exists in format hf only (compressed-tensors dropped sparse formats; GGUF has none)")
        for name in ("requantize", "zip", "overwrite"):
            require(isinstance(getattr(self, name), bool), f"export {name} must be true or false")
        require(isinstance(self.check_windows, int) and not isinstance(self.check_windows, bool)
                and self.check_windows >= 0, f"check_windows must be a whole number >= 0, got {self.check_windows!r}")
        require(isinstance(self.tolerance, int | float) and 0 < self.tolerance < 1,
                f"tolerance must be in (0, 1), e.g. 0.005 for 0.5%; got {self.tolerance!r}")

    @classmethod
    def from_dict(cls, raw: Any) -> ExportSpec:
        """Build from a recipe's ``export:`` mapping (``sparse: auto`` means None)."""
        require_mapping(raw, "`export:`", "{format: hf, path: out/}")
        check_keys(raw, [f.name for f in fields(cls)], "key", "`export:`")
        values = dict(raw)
        if values.get("sparse") == "auto":
            values["sparse"] = None
        if values.get("path") is not None:
            values["path"] = str(values["path"])
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class ExportResult:
    """What was written, how big it is on disk, and whether the reloaded artifact matched the model."""

    format: str
    path: str
    zip_path: str | None = None
    gguf_file: str | None = None
    squeezelab_format: bool = False  # hf folder in SqueezeLab's stored form (load with load_exported)
    size_bytes: int = 0  # every file of the folder
    weights_bytes: int = 0  # the .safetensors / .gguf files
    promised_bytes: int = 0  # what the stored schemes add up to (tensors only)
    zip_bytes: int | None = None
    check_passed: bool = False
    perplexity_before: float | None = None  # the model in memory (exact dequantized math) on the check windows
    perplexity_after: float | None = None  # the reloaded artifact on the same windows
    reference_perplexity: float | None = None  # what the file should hold, when the export re-rounded weights
    tokenizer_match: bool | None = None
    windows: int = 0
    seqlen: int = 0
    tolerance: float = 0.005
    export_s: float = 0.0
    reload_s: float = 0.0
    check_s: float = 0.0
    lossy: bool = False
    dtype: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
