"""Does llama.cpp run our GGUF files as our models run? Every family SqueezeLab writes as GGUF, logits compared.

    python bench/gguf_llamacpp_check.py                          # every family and variant, F32 and Q8_0, 1 thread
    python bench/gguf_llamacpp_check.py --families gpt2 falcon --types F32

For each family with a GGUF writer (``Family.gguf`` in ``core.architectures``) and a few variants that take
other paths through llama.cpp (Gemma-3 with another RoPE base in its sliding-window blocks; Phi-3 with a part of
each head rotary; GPT-NeoX with a sequential residual and half its head dimensions rotary; Falcon with one
key/value head per query head, and Falcon-40B's layout: new_decoder_architecture, two key/value heads, two norms
per block), the tiny model of
``tests/helpers.py`` is trained for a few steps (its logits then depend on its input, where a random init's
are near uniform and hide a wrong layout), written with ``core.export.gguf.write_gguf`` and evaluated on one
fixed token sequence twice: by llama.cpp (llama-cpp-python in the peer venv of ``bench/peer_llamacpp.py``, one
batch, ``logits_all``, an fp32 KV cache so that its default fp16 one does not blur the F32 comparison) and by
our model in fp32 (for a quantized file, the model holding exactly the weights the file holds, as the export
check builds it; ``Q4_0-exact``: the model quantized to RTN 4-bit g32 codes, which the file holds exactly as
Q4_0 blocks, the embedding in F16). Printed per file: the largest logit difference relative to the largest
logit, and at how many positions both put the same token first. llama.cpp multiplies quantized blocks by
activations it rounds to 8 bits (Q8_0 / Q8_1) itself, so quantized rows differ by more than F32 rows do.

Never in CI: it needs the peer venv (built once by ``python bench/peer_llamacpp.py --ensure``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SEQLEN = 48  # longer than the tiny Gemma configs' sliding window (16), so both attention kinds are compared
STEPS = 100
EXACT = "Q4_0-exact"  # a quantized model whose codes the file holds as they are (the other types: a float model)
_HALF_ROTARY = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
_GEMMA3_LOCAL_BASE = {"sliding_attention": {"rope_type": "default", "rope_theta": 20000.0},
                      "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}}
VARIANTS = (  # (label, family, config overrides)
    ("llama", "llama", {}),
    ("mistral", "mistral", {}),
    ("qwen2", "qwen2", {}),
    ("qwen3", "qwen3", {}),
    ("gemma2", "gemma2", {}),
    ("gemma3", "gemma3", {}),
    ("gemma3, sliding blocks' RoPE base 20000", "gemma3", {"rope_parameters": _GEMMA3_LOCAL_BASE}),
    ("phi3", "phi3", {}),
    ("phi3, rotary 0.75 (as Phi-4-mini)", "phi3", {"rope_parameters": {**_HALF_ROTARY, "partial_rotary_factor": 0.75}}),
    ("gpt2", "gpt2", {}),
    ("gpt_neox", "gpt_neox", {}),
    ("gpt_neox, sequential residual, rotary 0.5", "gpt_neox",
     {"use_parallel_residual": False, "rope_parameters": _HALF_ROTARY}),
    ("falcon (7B style: multi-query)", "falcon", {}),
    ("falcon (one kv head per query head)", "falcon", {"multi_query": False}),
    ("falcon (40B style: 2 kv heads, 2 norms)", "falcon", {"new_decoder_architecture": True, "num_kv_heads": 2}),
)


def sequence(family: str, tokenizer) -> list[int]:  # noqa: ANN001
    """A fixed token sequence of SEQLEN ids (with the tokenizer's BOS first where the family's adds one)."""
    from tests.helpers import BOS_FAMILIES, corpus_text

    ids = tokenizer(corpus_text(400, seed=7), add_special_tokens=False)["input_ids"][:SEQLEN]
    if family in BOS_FAMILIES:
        ids[0] = tokenizer.bos_token_id
    return ids


def our_logits(model, ids: list[int]):  # noqa: ANN001, ANN201
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()


def compare(ours, theirs) -> dict:  # noqa: ANN001
    """max |ours - llama.cpp| / max |ours|, and the share of positions whose top token agrees."""
    difference = float((ours - theirs).abs().max() / ours.abs().max())
    agree = int((ours.argmax(-1) == theirs.argmax(-1)).sum())
    return {"relative": difference, "agree": agree, "positions": ours.shape[0], "max_logit": float(ours.abs().max())}


def exact_codes(model):  # noqa: ANN001, ANN201
    """A copy of ``model`` with RTN 4-bit symmetric g32 codes in every block linear: written as Q4_0 blocks exactly
    (codes and scales unchanged), so llama.cpp runs the very weights our model runs."""
    import copy

    from core.quantize import QuantizeSpec, quantize_

    quantized = copy.deepcopy(model)
    quantize_(quantized, QuantizeSpec("rtn", bits=4, group_size=32, symmetric=True))
    return quantized


def check_variant(peer, label: str, family: str, overrides: dict, kinds: list[str], work: Path) -> list[dict]:  # noqa: ANN001
    import torch

    from core.architectures import family_of
    from core.export.check import _reference_model, exact_kernels
    from core.export.gguf import write_gguf
    from tests.helpers import family_tokenizer, trained_tiny_lm

    tokenizer = family_tokenizer(family)
    model = trained_tiny_lm(family, tokenizer, steps=STEPS, **overrides)
    ids = sequence(family, tokenizer)
    rows = []
    for kind in kinds:
        folder = work / f"{label.split()[0].strip(',')}-{len(rows)}-{abs(hash(label)) % 10**6}-{kind}"
        folder.mkdir(parents=True)
        written = exact_codes(model) if kind == EXACT else model
        report = write_gguf(written, tokenizer, folder, "auto" if kind == EXACT else kind)
        held = _reference_model(written, report.details["reference"]) if report.details["reference"] else written
        answer = peer.ask({"op": "logits", "file": str(folder / report.details["gguf_file"]), "tokens": ids,
                           "threads": 1, "kv_f32": True})
        theirs = torch.tensor(answer["logits"], dtype=torch.float32)
        with exact_kernels(held):
            ours = our_logits(held, ids)
        rows.append({"label": label, "arch": family_of(model).gguf.arch, "kind": kind,
                     "types": report.details["types"], **compare(ours, theirs)})
        print(f"{label} {kind}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| family (variant) | llama.cpp arch | GGUF type (tensors) | max \\|Δ logit\\| / max \\|logit\\| | "
             "same top token | max \\|logit\\| |", "|---|---|---|---|---|---|"]
    for row in rows:
        types = ", ".join(f"{count} {kind}" for kind, count in sorted(row["types"].items()))
        lines.append(f"| {row['label']} | `{row['arch']}` | {row['kind']} ({types}) | {row['relative']:.2e} | "
                     f"{row['agree']} / {row['positions']} | {row['max_logit']:.1f} |")
    return "\n".join(lines)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    labels = sorted({family for _, family, _ in VARIANTS})
    parser.add_argument("--families", nargs="*", default=labels, choices=labels)
    parser.add_argument("--types", nargs="*", default=["F32", "Q8_0", EXACT],
                        choices=["F32", "F16", "Q8_0", "Q4_0", "Q4_1", EXACT])
    parser.add_argument("--out", type=Path, default=None, help="keep the GGUF files here (default: a temp folder)")
    return parser.parse_args()


def main() -> None:
    import torch

    from bench.peer_llamacpp import Peer

    args = arguments()
    torch.set_num_threads(1)
    work = args.out or Path(tempfile.mkdtemp(prefix="squeezelab-gguf-check-"))
    peer = Peer(threads=1)
    try:
        versions = peer.ask({"op": "versions"})
        rows = [row for label, family, overrides in VARIANTS if family in args.families
                for row in check_variant(peer, label, family, overrides, args.types, work)]
    finally:
        peer.close()
    print(f"llama-cpp-python {versions['llama-cpp-python']} (CPU build), 1 thread, one batch of {SEQLEN} tokens "
          f"(logits_all), KV cache F32; ours: fp32 forward, torch {torch.__version__}, 1 thread; tiny models of "
          f"tests/helpers.py trained {STEPS} steps; files in {work}")
    print(table(rows))


if __name__ == "__main__":
    main()
