"""The compressed-tensors format (what llm-compressor writes; vLLM and transformers load it).

Written with the ``compressed_tensors`` library itself: a dense copy of the model gets the
quantization scheme of each layer attached (``apply_quantization_config``), SqueezeLab's scales
are put in place of the ones the library would compute, and ``ModelCompressor`` packs the
weights (``pack-quantized``: int32 words, ``weight_packed`` / ``weight_scale`` / ``weight_shape``).
The codes it recomputes from the dequantized weights are exactly SqueezeLab's, because each
weight is ``(code - 2^(bits-1)) * scale`` with the very scale it is divided by.

How SqueezeLab schemes map: symmetric ``bits`` (2..8) ``group_size`` g -> int, ``strategy: group``,
``group_size: g``; per output channel -> ``strategy: channel``. Not expressible here (a clear error
names what is): asymmetric schemes (compressed-tensors 0.20 packs their zero points in a shape that
transformers then refuses to load), GPT-2's Conv1D layers (the format quantizes ``nn.Linear``).
A quantized embedding tied to ``lm_head`` cannot be reloaded by transformers from this format, so it
is written dense (the dequantized 8-bit values). Sparse formats were dropped by compressed-tensors:
a pruned model is written dense here; the ``hf`` format stores it sparse.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from core.errors import CancelledError, SpecError
from core.export.hf import WriteReport, plain_config, quantized_modules
from core.models.exported import skeleton
from core.quantize.qembedding import TiedQuantEmbedding
from core.quantize.qlinear import QuantLinear
from core.quantize.scheme import QuantScheme

FORMAT = "pack-quantized"


def _skeleton_types(model: nn.Module, names: list[str]) -> dict[str, type]:
    """The module class transformers builds at each name (on the meta device: costs no memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(plain_config(model, torch.float32))
    return {name: type(skeleton.get_submodule(name)) for name in names}


def check_ct(model: nn.Module) -> None:
    """Raise SpecError, naming what can be written, when a layer's scheme has no compressed-tensors form."""
    modules = quantized_modules(model)
    asymmetric = sorted(name for name, m in modules.items() if not m.scheme.symmetric)
    if asymmetric:
        raise SpecError(
            f"compressed-tensors cannot hold the asymmetric scheme of {len(asymmetric)} layer(s) "
            f"(e.g. {asymmetric[0]}): "
            "its pack-quantized zero points do not reload in transformers with compressed-tensors 0.20. Export it as "
            "format hf (keeps the scheme as it is), or quantize with symmetric: true for compressed-tensors")
    not_linear = [name for name, kind in _skeleton_types(model, list(modules)).items() if kind is not nn.Linear]
    if not_linear:
        raise SpecError(
            f"compressed-tensors quantizes nn.Linear layers, but {not_linear[0]} is a {model.config.model_type} "
            f"Conv1D/other layer; export this model as format hf, or export the unquantized model")


def _scheme_args(scheme: QuantScheme):
    from compressed_tensors.quantization import QuantizationArgs

    strategy = "group" if scheme.group_size else "channel"
    return QuantizationArgs(num_bits=scheme.bits, type="int", symmetric=True, strategy=strategy,
                            group_size=scheme.group_size)


def _config_groups(model: nn.Module, targets: dict[str, QuantLinear]) -> tuple[dict, list[str]]:
    """One config group per distinct scheme: targets ``Linear`` (+ ignore list) when all share one."""
    from compressed_tensors.quantization import QuantizationScheme

    schemes: dict[QuantScheme, list[str]] = {}
    for name, module in targets.items():
        schemes.setdefault(module.scheme, []).append(name)
    if len(schemes) == 1:
        (scheme, _), = schemes.items()
        linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear | QuantLinear)]
        ignore = [name for name in linear if name not in targets]
        return {"group_0": QuantizationScheme(targets=["Linear"], weights=_scheme_args(scheme))}, ignore
    groups = {f"group_{i}": QuantizationScheme(targets=names, weights=_scheme_args(scheme))
              for i, (scheme, names) in enumerate(schemes.items())}
    return groups, []


def _dense_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A plain transformers model of the same config with every weight dequantized into it."""
    dense = skeleton(plain_config(model, dtype), dtype)
    source = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear | TiedQuantEmbedding):
            source[f"{name}.weight"] = module.weight if isinstance(module, TiedQuantEmbedding) \
                else module.dequantized_weight(torch.float32)
            if getattr(module, "bias", None) is not None:
                source[f"{name}.bias"] = module.bias
    source.update({name: p for name, p in model.named_parameters() if name not in source})
    with torch.no_grad():
        for name, parameter in dense.named_parameters():
            parameter.copy_(source[name].to(parameter.dtype))
    return dense.eval()


def write_ct(model: nn.Module, tokenizer, folder: Path, dtype: torch.dtype,
             cancel: Callable[[], bool] | None = None) -> WriteReport:
    """Write ``model`` as a compressed-tensors folder (dense when nothing is quantized)."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config

    check_ct(model)
    report = WriteReport()
    tied = isinstance(model.get_input_embeddings(), TiedQuantEmbedding)
    targets = {name: m for name, m in quantized_modules(model).items()
               if not (tied and m is model.get_output_embeddings())}
    if tied:
        report.notes.append("the quantized embedding tied to lm_head is written dense (its dequantized values): "
                            "transformers cannot reload a quantized tied embedding from compressed-tensors")
    dense = _dense_copy(model, dtype)
    if cancel is not None and cancel():
        raise CancelledError("export cancelled before the weights were written")
    compressor = None
    if targets:
        groups, ignore = _config_groups(model, targets)
        config = QuantizationConfig(config_groups=groups, ignore=ignore, quantization_status="frozen", format=FORMAT)
        apply_quantization_config(dense, config, show_progress=False)
        with torch.no_grad():
            for name, module in targets.items():
                dense.get_submodule(name).weight_scale.copy_(module.scales.float().reshape(
                    dense.get_submodule(name).weight_scale.shape))
        compressor = ModelCompressor.from_pretrained_model(dense, quantization_format=FORMAT)
        compressor.compress_model(dense)
    if _has_pruned_weights(model):
        report.notes.append("compressed-tensors has no sparse format (dropped in recent releases): pruned weights "
                            "are stored dense here; format hf stores them sparse")
    dense.save_pretrained(folder)
    if compressor is not None:
        compressor.update_config(str(folder))
    tokenizer.save_pretrained(folder)
    report.promised_bytes = _promised_bytes(dense)
    return report


def _has_pruned_weights(model: nn.Module, zeros: float = 0.1) -> bool:
    """Whether some dense linear weight is at least ``zeros`` exact zeros (a pruned model)."""
    return any(int(torch.count_nonzero(m.weight)) <= (1 - zeros) * m.weight.numel()
               for m in model.modules() if isinstance(m, nn.Linear))


def _promised_bytes(dense: nn.Module) -> int:
    """Bytes of the tensors saved (tied ones once): packed codes, scales and dense weights."""
    seen, total = set(), 0
    for tensor in list(dense.parameters()) + list(dense.buffers()):
        if tensor.data_ptr() in seen or tensor.device.type == "meta":
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    return total
