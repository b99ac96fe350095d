"""The family x technique x format matrix: every family of ``core.architectures`` through every technique and
export format, each cell with an exact-logits check or a numeric bound, or a clear refusal (README's support
table lists the same cells).

Models are tiny (hidden 32) and briefly trained (``trained_tiny_lm``), so that a technique that damages them
shows in their perplexity; bounds are ratios to the family's own perplexity on the same windows.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch

from core import data, models
from core.distill import training_data
from core.distill.spec import DistillSpec
from core.distill.students import build_student_
from core.distill.train import _Trainer, distill_
from core.errors import SpecError
from core.evaluate import evaluate_quality
from core.export import ExportSpec, export_model, load_exported
from core.layers import decoder_blocks, weight_matrix
from core.prune.apply import prune_
from core.prune.spec import PruneSpec
from core.prune.structured import StructuredSpec
from core.prune.structured.apply import prune_structured_
from core.prune.structured.surgery import all_mlp_parts, attentions, kv_geometry
from core.quantize import QuantizeSpec, quantize_
from tests.helpers import BOS_FAMILIES, MATRIX_FAMILIES, corpus_text, family_tokenizer, tiny_causal_lm, trained_tiny_lm

# Cells a family does not support: the error each raises (the README's table says the same)
REFUSED = {
    ("phi3", "heads"): "head size is hidden_size / num_heads",
    ("gpt2", "heads"): "head size is hidden_size / num_heads",
    ("opt", "heads"): "head size is hidden_size / num_heads",
    ("gpt_neox", "heads"): "head size is hidden_size / num_heads",
    ("falcon", "heads"): "head size is hidden_size / num_heads",
    ("gpt2", "compressed-tensors"): "compressed-tensors quantizes nn.Linear layers",
    ("falcon", "compressed-tensors"): "compressed-tensors quantizes nn.Linear layers",
}
GGUF_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "gpt2", "gpt_neox",
                 "falcon")  # OPT: refused, saying why
# The families SqueezeLab reads back itself (transformers' GGUF loader cannot), with the variants that take other
# paths through the writer and the reader: GPT-NeoX's sequential residual and rotary share, Falcon's qkv layouts
_HALF_ROTARY = {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}
GGUF_OWN_READ = [("gpt2", {}), ("gpt_neox", {}),
                 ("gpt_neox", {"use_parallel_residual": False, "rope_parameters": _HALF_ROTARY}),
                 ("falcon", {}), ("falcon", {"multi_query": False}),
                 ("falcon", {"new_decoder_architecture": True, "num_kv_heads": 2}),
                 ("falcon", {"new_decoder_architecture": True, "num_kv_heads": 2, "num_ln_in_parallel_attn": 1})]

# Perplexity ratios to the trained family's own (same windows) that each technique stays under
# (measured on these models: at most 1.18, 1.09, 1.16, 1.06, 1.76, 1.007, 1.004, 1.006, 1.001, 1.001)
BOUNDS = {"magnitude": 1.3, "wanda": 1.2, "sparsegpt": 1.25, "sparsegpt_2:4": 1.15, "layers": 2.2,
          "rtn": 1.05, "gptq": 1.05, "awq": 1.05, "int8_dynamic": 1.01, "lm_head": 1.005}


def _windows(family: str, tokenizer, n: int = 8) -> torch.Tensor:
    ids = tokenizer(corpus_text(600, seed=3), return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    windows = ids[: n * 32].view(n, 32).clone()
    if family in BOS_FAMILIES:  # as core.data.windows does for a tokenizer that adds a BOS
        windows[:, 0] = tokenizer.bos_token_id
    return windows


@pytest.fixture(scope="module")
def trained() -> dict[str, tuple]:
    """Per family: (trained model, tokenizer, evaluation windows, calibration windows, its perplexity)."""
    made = {}
    for family in MATRIX_FAMILIES:
        tokenizer = family_tokenizer(family)
        model = trained_tiny_lm(family, tokenizer, steps=100)
        windows = _windows(family, tokenizer)
        made[family] = (model, tokenizer, windows[:4], windows[4:], evaluate_quality(model, windows[:4]).perplexity)
    return made


def _ratio(model, row) -> float:
    return evaluate_quality(model, row[2]).perplexity / row[4]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _expect_refusal(family: str, cell: str):
    return pytest.raises(SpecError, match=re.escape(REFUSED[family, cell]))


@pytest.mark.parametrize("family", MATRIX_FAMILIES)
def test_load_evaluate_and_clone(family, trained, tmp_path):
    model, tokenizer, windows, _, perplexity = trained[family]
    assert perplexity < 40  # trained: far below the 300-token vocabulary a random model scores
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = models.load(str(tmp_path))
    assert torch.equal(_logits(loaded.model, windows), _logits(model, windows))
    assert torch.equal(_logits(models.clone(model), windows), _logits(model, windows))


@pytest.mark.parametrize("family", MATRIX_FAMILIES)
@pytest.mark.parametrize("method,pattern", [("magnitude", "unstructured"), ("wanda", "unstructured"),
                                            ("sparsegpt", "unstructured"), ("sparsegpt", "2:4")])
def test_unstructured_and_2_4_sparsity(family, method, pattern, trained):
    row = trained[family]
    model = copy.deepcopy(row[0])
    spec = PruneSpec(method, 0.5 if pattern == "unstructured" else None, pattern=pattern)
    report = prune_(model, spec, row[3] if method != "magnitude" else None)
    assert report.sparsity == pytest.approx(0.5, abs=0.01)
    assert _ratio(model, row) < BOUNDS[method if pattern == "unstructured" else f"{method}_{pattern}"]


@pytest.mark.parametrize("family", MATRIX_FAMILIES)
def test_removing_mlp_channels_equals_masking_them(family, trained):
    model, _, windows, calibration, _ = trained[family]
    dense, pruned = copy.deepcopy(model), copy.deepcopy(model)
    report = prune_structured_(pruned, StructuredSpec("mlp_channels", 0.25), calibration)
    assert report.importance == "activation_norm" and report.params_after < report.params_before
    with torch.no_grad():  # the dense model with the removed channels' output-projection columns zeroed
        for index, mlp in enumerate(all_mlp_parts(dense)):
            weight_matrix(mlp.output)[:, list(report.removed[index])] = 0
    torch.testing.assert_close(_logits(pruned, windows), _logits(dense, windows), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", MATRIX_FAMILIES)
def test_removing_kv_groups_equals_masking_them_or_is_refused(family):
    tokenizer = family_tokenizer(family)
    several_groups = {"num_attention_heads": 4, "num_key_value_heads": 2} if family in ("qwen3", "gemma2", "gemma3") \
        else {}  # the tiny Qwen3 and Gemma configs have one KV group, which cannot lose one
    model = tiny_causal_lm(family, tokenizer, **several_groups)
    windows = _windows(family, tokenizer, 2)
    if (family, "heads") in REFUSED:
        with _expect_refusal(family, "heads"):
            prune_structured_(model, StructuredSpec("heads", 0.5))
        return
    dense = copy.deepcopy(model)
    report = prune_structured_(model, StructuredSpec("heads", 0.5), windows)
    _, _, q_rows = kv_geometry(dense.config, attentions(dense)[0])
    with torch.no_grad():  # zero the o_proj columns of the removed groups' query heads
        for index, attention in enumerate(attentions(dense)):
            for group in report.removed[index]:
                attention.o_proj.weight[:, group * q_rows: (group + 1) * q_rows] = 0
    torch.testing.assert_close(_logits(model, windows), _logits(dense, windows), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", MATRIX_FAMILIES)
def test_dropping_blocks(family, trained):
    row = trained[family]
    model = copy.deepcopy(row[0])
    total = len(decoder_blocks(model)[1])
    report = prune_structured_(model, StructuredSpec("layers", 0.5), row[3])
    assert len(decoder_blocks(model)[1]) == total - len(report.removed_layers) < total
    assert _ratio(model, row) < BOUNDS["layers"]


@pytest.mark.parametrize("family", MATRIX_FAMILIES)
@pytest.mark.parametrize("method", ["rtn", "gptq", "awq", "int8_dynamic"])
def test_weight_quantization(family, method, trained):
    row = trained[family]
    model = copy.deepcopy(row[0])
    spec = QuantizeSpec(method, bits=4 if method != "int8_dynamic" else 8, group_size=16 if method != "int8_dynamic"
                        else None)
    report = quantize_(model, spec, row[3] if spec.needs_calibration else None)
    if method == "int8_dynamic":
        assert any(note.startswith("SmoothQuant alpha 0.5") for note in report.notes)  # folded exactly, all families
    assert _ratio(model, row) < BOUNDS[method]


@pytest.mark.parametrize("family", MATRIX_FAMILIES)
def test_lm_head_and_tied_embedding_at_8_bits(family, trained):
    row = trained[family]
    model = copy.deepcopy(row[0])
    quantize_(model, QuantizeSpec("rtn", bits=8, group_size=16, lm_head=True, include=("*.no_such_layer",)))
    assert abs(_ratio(model, row) - 1) < BOUNDS["lm_head"] - 1


@pytest.mark.parametrize("family", MATRIX_FAMILIES)
def test_distilling_a_layer_dropped_student(family, trained):
    teacher, tokenizer, windows, _, _ = trained[family]
    spec = DistillSpec(student="layer_drop", steps=15, lr=3e-3, batch_size=4, seqlen=32, eval_every=0, eval_windows=2)
    student, _ = build_student_(copy.deepcopy(teacher), spec)
    assert len(decoder_blocks(student)[1]) < len(decoder_blocks(teacher)[1])
    before = evaluate_quality(student, windows).perplexity
    ids = tokenizer(corpus_text(), return_tensors="pt")["input_ids"][0]
    distill_(student, teacher, spec, ids, windows[:2], bos=data.added_bos(tokenizer))
    assert evaluate_quality(student, windows).perplexity < before


@pytest.mark.parametrize("eval_text", ["holdout", "corpus"])
def test_distillation_windows_start_with_the_bos_as_evaluation_does(eval_text, trained, tmp_path):
    teacher, tokenizer, _, _, _ = trained["gemma3"]
    bos = data.added_bos(tokenizer)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(corpus_text(), encoding="utf-8")
    spec = DistillSpec(student="self", text=str(corpus), eval_text=eval_text if eval_text == "holdout" else str(corpus),
                       batch_size=4, seqlen=32, eval_windows=3)
    train_ids, held = training_data(tokenizer, spec, 32, "sample-train")
    assert bos is not None and held.shape == (3, 32)
    assert (held[:, 0] == bos).all() and not (held[:, 1:] == bos).any() and not (train_ids == bos).any()
    trainer = _Trainer(copy.deepcopy(teacher), teacher, spec, train_ids, 32, bos)
    batch = trainer._batch()
    assert batch.shape == (4, 32) and (batch[:, 0] == bos).all() and not (batch[:, 1:] == bos).any()
    assert _Trainer(teacher, teacher, spec, train_ids, 32)._batch().shape == (4, 32)  # no BOS: 32 drawn tokens


@pytest.mark.parametrize("family", MATRIX_FAMILIES)
@pytest.mark.parametrize("fmt", ["hf", "compressed-tensors", "gguf"])
def test_export_reload_within_half_a_percent(family, fmt, trained, tmp_path):
    model, tokenizer, windows, _, _ = trained[family]
    model = copy.deepcopy(model)
    quantize_(model, QuantizeSpec("rtn", bits=8, group_size=32))
    spec = ExportSpec(format=fmt, check_windows=0)
    if (family, fmt) in REFUSED or (fmt == "gguf" and family not in GGUF_FAMILIES):
        with pytest.raises(SpecError, match=REFUSED.get((family, fmt), "GGUF")):
            export_model(model, tokenizer, spec, windows, out=tmp_path / "out")
        assert not (tmp_path / "out").exists()
        return
    result = export_model(model, tokenizer, spec, windows, out=tmp_path / "out")
    assert result.check_passed and result.tokenizer_match
    assert abs(result.perplexity_after / result.perplexity_before - 1) <= 0.005


@pytest.mark.parametrize("family,overrides", GGUF_OWN_READ,
                         ids=[f"{family}-{'-'.join(overrides) or 'default'}" for family, overrides in GGUF_OWN_READ])
def test_gguf_f32_reads_back_with_the_same_logits(family, overrides, tmp_path):
    tokenizer = family_tokenizer(family)
    model = trained_tiny_lm(family, tokenizer, steps=30, **overrides)
    windows = _windows(family, tokenizer, 2)
    result = export_model(model, tokenizer, ExportSpec(format="gguf", gguf_type="F32", check_windows=0), windows,
                          out=tmp_path / "out")
    assert result.check_passed and result.tokenizer_match
    assert any("load this file with llama.cpp or SqueezeLab" in note for note in result.notes)
    reloaded = load_exported(tmp_path / "out")
    rebuilt, config = reloaded.model.config.to_dict(), model.config.to_dict()
    assert type(reloaded.model) is type(model) and all(rebuilt[key] == config[key] for key in overrides)
    torch.testing.assert_close(_logits(reloaded.model, windows), _logits(model, windows), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "falcon"])
def test_gguf_q8_0_of_a_float_model_reads_back_as_the_file_holds_it(family, trained, tmp_path):
    model, tokenizer, windows, _, _ = trained[family]
    result = export_model(model, tokenizer, ExportSpec(format="gguf", gguf_type="Q8_0", check_windows=0), windows,
                          out=tmp_path / "out")
    assert result.lossy and result.check_passed and result.reference_perplexity is not None
    assert abs(result.perplexity_after / result.reference_perplexity - 1) < 1e-4  # the re-rounded weights, exactly
    assert abs(result.perplexity_after / result.perplexity_before - 1) <= 0.005


def test_a_gguf_file_of_an_own_read_family_loads_as_a_model_reference(trained, tmp_path):
    model, tokenizer, windows, _, _ = trained["gpt_neox"]
    result = export_model(model, tokenizer, ExportSpec(format="gguf", gguf_type="F32", check_windows=0), windows,
                          out=tmp_path / "out")
    loaded = models.load(str(tmp_path / "out" / result.gguf_file), device="cpu")
    assert loaded.model.config.model_type == "gpt_neox"
    torch.testing.assert_close(_logits(loaded.model, windows), _logits(model, windows), atol=1e-5, rtol=1e-5)


# Variants a family's llama.cpp architecture would run as another model: refused before anything is written
GGUF_VARIANT_REFUSALS = [
    ("falcon", {"alibi": True}, "llama.cpp's falcon has rotary positions only, no ALiBi", "alibi: True"),
    ("falcon", {"bias": True}, "llama.cpp's falcon has no linear biases", "bias: True"),
    ("falcon", {"parallel_attn": False}, "falcon adds attention and MLP in parallel", "parallel_attn: False"),
    ("gpt_neox", {"hidden_act": "relu"}, "llama.cpp's gptneox runs GELU in the MLP", "hidden_act: 'relu'"),
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "does not scale attention by 1/layer", "idx: True"),
    ("qwen3", {"hidden_act": "gelu"}, "llama.cpp's qwen3 runs SiLU in the MLP", "hidden_act: 'gelu'"),
    ("gemma2", {"query_pre_attn_scalar": 64}, "queries by 1/sqrt(256)", "1/sqrt(64) (query_pre_attn_scalar)"),
    ("gemma3", {"final_logit_softcapping": 30.0}, "does not soft-cap", "final_logit_softcapping: 30.0"),
]


@pytest.mark.parametrize("family,overrides,does,has", GGUF_VARIANT_REFUSALS,
                         ids=[f"{family}-{next(iter(overrides))}" for family, overrides, _, _ in GGUF_VARIANT_REFUSALS])
def test_gguf_refuses_variants_llama_cpp_would_run_as_another_model(family, overrides, does, has, tmp_path):
    tokenizer = family_tokenizer(family)
    model = tiny_causal_lm(family, tokenizer, **overrides)
    with pytest.raises(SpecError, match=f"cannot write this '{model.config.model_type}' model: .*{re.escape(does)}.*"
                                        f"{re.escape(has)}.*Export as format hf or compressed-tensors"):
        export_model(model, tokenizer, ExportSpec(format="gguf"), _windows(family, tokenizer, 1), out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_the_readme_support_table_marks_the_refused_cells():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    rows = {re.search(r"\(`(\w+)`\)", line).group(1): line for line in readme.splitlines()
            if line.startswith("| ") and "(`" in line and line.count("|") == 14}
    for family in MATRIX_FAMILIES:
        model_type = "gemma3_text" if family == "gemma3" else family
        refused = sum(1 for (name, _) in REFUSED if name == family) + (family not in GGUF_FAMILIES)
        assert rows[model_type].count("✗") == refused, family
