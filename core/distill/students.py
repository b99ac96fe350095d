"""Students: built from the teacher (blocks dropped, MLP narrowed), or loaded; and the compatibility check.

``layer_drop`` and ``width`` reuse structured pruning's surgery (``core.prune.structured``): the config
is updated and the student starts from the kept weights.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from core.checks import require
from core.distill.spec import DistillSpec
from core.errors import SpecError
from core.layers import decoder_blocks, param_count
from core.models.device import DTYPES
from core.models.loading import load
from core.models.source import LoadedModel
from core.prune.structured.apply import prune_structured_
from core.prune.structured.spec import StructuredSpec

POSSIBLE_STUDENTS = ("a layer-dropped copy of the teacher (student: layer_drop), a width-reduced copy "
                     "(student: width), the compressed model itself (student: self), or a model trained with the "
                     "teacher's tokenizer")


class VocabularyMismatchError(SpecError):
    """Teacher and student do not share a vocabulary, so their next-token distributions cannot be compared."""


def evenly_spaced_layers(total: int, count: int) -> tuple[int, ...]:
    """``count`` block indices out of ``total``, evenly spread, always with the first and the last."""
    require(1 <= count <= total, f"cannot keep {count} of {total} blocks; keep between 1 and {total}")
    if count == 1:
        return (total - 1,)
    return tuple(sorted({int(i * (total - 1) / (count - 1) + 0.5) for i in range(count)}))


def kept_layers(spec: DistillSpec, total: int) -> tuple[int, ...]:
    """The blocks a layer-dropped student keeps, checked against the model's ``total`` blocks."""
    keep = spec.keep_layers if spec.keep_layers is not None else tuple(range(0, total, spec.keep_every))
    require(keep[-1] < total, f"keep_layers {list(keep)} names a block past the last one (blocks 0..{total - 1})")
    require(len(keep) < total, f"keep_layers {list(keep)} keeps all {total} blocks, so nothing is dropped; "
                                f"keep fewer blocks or use student: self")
    return keep


def build_student_(model: nn.Module, spec: DistillSpec) -> tuple[nn.Module, str]:
    """(student, description) for the built-in kinds, made from ``model`` IN PLACE (the pipeline's copy).

    ``layer_drop`` and ``width`` reuse ``core.prune.structured``: the config is updated and the student
    starts from the kept weights. Model-reference students are loaded by ``load_student``.
    """
    if spec.student == "self":
        return model, "the model itself"
    if spec.student == "layer_drop":
        total = len(decoder_blocks(model)[1])
        keep = kept_layers(spec, total)
        drop = tuple(i for i in range(total) if i not in keep)
        prune_structured_(model, StructuredSpec(target="layers", layers=drop))
        return model, f"layer-dropped copy keeping blocks {list(keep)} of {total}"
    if spec.student == "width":
        report = prune_structured_(model, StructuredSpec(target="mlp_channels", fraction=spec.width_fraction))
        return model, f"width-reduced copy ({report.config_changes})"
    raise SpecError(f"student {spec.student!r} is a model reference; load it with load_student")


def load_student(ref: str, like: nn.Module, allow_pickle: bool = False, trust_remote_code: bool = False) -> LoadedModel:
    """Load a model-reference student (or teacher) on the device and in the dtype of ``like``; the opt-ins
    are the recipe's (``core.models.load``)."""
    parameter = next(like.parameters())
    dtype = {v: k for k, v in DTYPES.items()}.get(parameter.dtype)
    return load(ref, device=str(parameter.device), dtype=dtype, allow_pickle=allow_pickle,
                trust_remote_code=trust_remote_code)


def _vocab_rows(model: nn.Module) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)


def check_compatible(teacher: nn.Module, student: nn.Module, teacher_tokenizer: Any = None,
                     student_tokenizer: Any = None) -> list[str]:
    """Refuse a pair whose vocabularies differ; warn (and return a note) when the student is larger."""
    teacher_vocab, student_vocab = _vocab_rows(teacher), _vocab_rows(student)
    same_tokens = True
    if teacher_tokenizer is not None and student_tokenizer is not None:
        same_tokens = teacher_tokenizer.get_vocab() == student_tokenizer.get_vocab()
    if teacher_vocab != student_vocab or not same_tokens:
        detail = (f"the teacher predicts over {teacher_vocab} tokens and the student over {student_vocab}"
                  if teacher_vocab != student_vocab else "the two tokenizers map text to different token ids")
        raise VocabularyMismatchError(
            f"teacher and student do not share a vocabulary ({detail}); distillation compares their "
            f"next-token distributions token by token. Possible students: {POSSIBLE_STUDENTS}")
    notes = []
    teacher_params, student_params = param_count(teacher), param_count(student)
    if student_params > teacher_params:
        note = (f"the student has more parameters ({student_params:,}) than the teacher ({teacher_params:,}); "
                "distillation usually trains a smaller model")
        warnings.warn(note, UserWarning, stacklevel=2)
        notes.append(note)
    return notes
