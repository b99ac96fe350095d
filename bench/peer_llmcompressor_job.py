"""One llm-compressor ``oneshot`` run, executed inside the peer's own virtual environment.

    <peer venv>/bin/python bench/peer_llmcompressor_job.py job.json

This file must not import anything from SqueezeLab: it runs under llm-compressor's pinned torch,
transformers and compressed-tensors, which need not match ours. ``bench/peer_llmcompressor.py``
writes the job file and reads back the result. The job (JSON):

    {"model_dir": <HF folder>, "out_dir": <folder for the compressed model>,
     "calibration_ids": <.json file: a list of lists of token ids, all the same length>,
     "recipe": {"kind": "sparsegpt" | "wanda" | "gptq" | "rtn" | "awq",
                "sparsity": 0.5, "mask_structure": "0:0" | "2:4",       # pruning
                "bits": 4, "group_size": 64, "symmetric": true},         # quantization
     "threads": 2}

Optional recipe keys, passed on to the modifier when present: ``dampening_frac`` and ``block_size``
(SparseGPT, GPTQ), ``actorder`` (GPTQ; llm-compressor's default is "static"), ``observer``
(weight observer for GPTQ / RTN; the scheme's default is min-max), ``owl`` (SparseGPT: ``{"m": 5,
"lambda": 0.08}`` sets ``sparsity_profile: owl`` with those ``owl_m`` / ``owl_lmbda``), ``n_grid`` and
``duo_scaling`` (AWQ). ``awq`` is llm-compressor's ``AWQModifier`` (scales searched and folded) followed by
its ``QuantizationModifier`` (RTN) with the same scheme keys as ``rtn``.

What is timed: the ``oneshot`` call alone (wall seconds, ``time.perf_counter``), not loading or
saving. Peak RSS is the process's ``ru_maxrss`` after oneshot (so it includes the loaded model).

What is saved to ``out_dir``:
- pruning (sparsegpt, wanda): dense fp32 safetensors (``save_compressed=False``): the zeros are real
  zeros in ordinary ``weight`` tensors, and plain ``AutoModelForCausalLM.from_pretrained`` reloads it.
- quantization (gptq, rtn): llm-compressor's default compressed-tensors format (``pack-quantized``
  for int4/int8 weight-only: int32-packed ``weight_packed`` plus ``weight_scale`` [and
  ``weight_zero_point`` when asymmetric], with a ``quantization_config`` in config.json).
The tokenizer files of ``model_dir`` are copied beside the weights.

Prints, as its last stdout line, one JSON object:
``{"wall_s", "peak_rss_bytes", "llmcompressor", "torch", "transformers", "compressed_tensors",
"datasets", "recipe", "format", "out_dir", "samples", "seqlen", "threads"}``.
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from pathlib import Path

PRUNING_KINDS = ("sparsegpt", "wanda")
QUANT_KINDS = ("gptq", "rtn", "awq")
# Linear layers inside the decoder blocks (``model.layers.N``); lm_head and embeddings stay dense.
DECODER_BLOCKS = r"re:.*layers\.\d+$"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
    "tokenizer.model", "added_tokens.json", "chat_template.jinja", "generation_config.json",
)


def build_modifier(recipe: dict):
    """The llm-compressor modifier for ``recipe`` (see the module docstring for its keys)."""
    kind = recipe["kind"]
    extra = {k: recipe[k] for k in ("dampening_frac", "block_size") if k in recipe}
    if kind in PRUNING_KINDS:
        common = {
            "sparsity": float(recipe.get("sparsity", 0.5)),
            "mask_structure": str(recipe.get("mask_structure", "0:0")),
            # Pruning modifiers take the *blocks* as targets and prune every Linear inside them.
            "targets": [DECODER_BLOCKS],
            "ignore": ["re:.*lm_head"],
        }
        if kind == "sparsegpt":
            from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier

            if "owl" in recipe:
                extra.update(sparsity_profile="owl", owl_m=recipe["owl"]["m"], owl_lmbda=recipe["owl"]["lambda"])
            return SparseGPTModifier(**common, **extra)
        from llmcompressor.modifiers.pruning.wanda import WandaPruningModifier

        return WandaPruningModifier(**common)
    if kind in QUANT_KINDS:
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

        group_size = recipe.get("group_size")
        weights = {
            "num_bits": int(recipe.get("bits", 4)),
            "type": "int",
            "symmetric": bool(recipe.get("symmetric", True)),
            "strategy": "group" if group_size else "channel",
            "group_size": int(group_size) if group_size else None,
        }
        if "observer" in recipe:
            weights["observer"] = recipe["observer"]
        if kind == "gptq" and "actorder" in recipe:
            weights["actorder"] = recipe["actorder"]
        scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**weights))
        common = {"config_groups": {"group_0": scheme}, "ignore": ["lm_head"]}
        if kind == "gptq":
            from llmcompressor.modifiers.gptq import GPTQModifier

            return GPTQModifier(**common, **extra)
        from llmcompressor.modifiers.quantization import QuantizationModifier

        if kind == "awq":
            from llmcompressor.modifiers.transform.awq import AWQModifier

            awq = {k: recipe[k] for k in ("n_grid", "duo_scaling") if k in recipe}
            return [AWQModifier(**awq), QuantizationModifier(**common)]
        return QuantizationModifier(**common)
    raise ValueError(f"unknown recipe kind {kind!r}; use one of {PRUNING_KINDS + QUANT_KINDS}")


def calibration_dataset(ids_path: str):
    """A ``datasets.Dataset`` of pre-tokenized rows (``input_ids``, ``attention_mask``)."""
    from datasets import Dataset

    rows = json.loads(Path(ids_path).read_text())
    if not rows or not all(len(r) == len(rows[0]) for r in rows):
        raise ValueError(f"{ids_path}: expected a non-empty list of equal-length token id lists")
    rows = [[int(t) for t in r] for r in rows]
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})


def version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version

    try:
        return _version(name)
    except PackageNotFoundError:
        return None


def main(job_path: str) -> dict:
    job = json.loads(Path(job_path).read_text())
    recipe = dict(job["recipe"])
    threads = int(job.get("threads", 2))

    import torch

    torch.set_num_threads(threads)
    if not torch.cuda.is_available():
        # llm-compressor's AWQ pins its cached activations (a host-to-device transfer speed-up), which torch refuses
        # without an accelerator; on a CPU-only machine pinning is a no-op, so the peer runs unchanged otherwise
        torch.Tensor.pin_memory = lambda self, *args, **kwargs: self
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, out_dir = str(job["model_dir"]), Path(job["out_dir"])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, device_map=None).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ds = calibration_dataset(job["calibration_ids"])
    modifier = build_modifier(recipe)

    start = time.perf_counter()
    model = oneshot(
        model=model,
        tokenizer=tokenizer,
        dataset=ds,
        recipe=modifier,
        num_calibration_samples=len(ds),
        max_seq_length=len(ds[0]["input_ids"]),
        shuffle_calibration_samples=False,
    )
    wall_s = time.perf_counter() - start
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)

    out_dir.mkdir(parents=True, exist_ok=True)
    pruning = recipe["kind"] in PRUNING_KINDS
    model.save_pretrained(str(out_dir), save_compressed=not pruning)
    for name in TOKENIZER_FILES:
        src = Path(model_dir) / name
        if src.is_file() and not (out_dir / name).exists():
            shutil.copy2(src, out_dir / name)
    if not (out_dir / "tokenizer_config.json").exists():
        tokenizer.save_pretrained(str(out_dir))

    config = json.loads((out_dir / "config.json").read_text())
    qconf = config.get("quantization_config") or {}
    fmt = "dense" if pruning else qconf.get("format", "unknown")
    return {
        "wall_s": wall_s,
        "peak_rss_bytes": peak_rss,
        "llmcompressor": version("llmcompressor"),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "compressed_tensors": version("compressed-tensors"),
        "datasets": version("datasets"),
        "recipe": recipe,
        "format": fmt,
        "out_dir": str(out_dir),
        "samples": len(ds),
        "seqlen": len(ds[0]["input_ids"]),
        "threads": threads,
    }


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: peer_llmcompressor_job.py JOB.json")
    result = main(sys.argv[1])
    sys.stdout.flush()
    print(json.dumps(result), flush=True)
