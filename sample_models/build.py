"""Train the bundled sample models from scratch on this machine's CPU.

    python sample_models/build.py            # or: squeezelab build-samples

Builds a byte-level BPE tokenizer and two Llama-style causal LMs that share it -- a teacher
(~3.2M parameters) and a student (~1.3M) -- on the Python standard library's own source (see
corpus.py), then writes each as a Hugging Face folder with a model card. Seeded and
deterministic for a given machine and thread count. Every folder is written under a temporary
name and renamed into place only when complete, so a failed build never damages the committed models.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from core.data import windows
from core.evaluate import evaluate_quality
from sample_models.corpus import DOCUMENT_SEPARATOR, HELDOUT_MODULES, heldout_text, train_text

PAD_TOKEN = "<|pad|>"
SAMPLES_DIR = Path(__file__).resolve().parent
PROMPTS = ("import os\nimport sys\n", "class Parser:\n    def __init__(self", "    for i in range(",
           "    def __repr__(self):\n")


@dataclass(frozen=True)
class ModelPlan:
    """Shape and training budget of one sample model."""

    name: str
    hidden: int  # model width
    layers: int
    heads: int
    kv_heads: int  # fewer than heads: grouped-query attention, as in current Llama-style models
    intermediate: int  # SwiGLU width, ~8/3 of hidden rounded to a multiple of 32
    steps: int
    lr: float


TEACHER = ModelPlan("teacher", hidden=192, layers=6, heads=6, kv_heads=3, intermediate=512, steps=900, lr=3e-3)
STUDENT = ModelPlan("student", hidden=128, layers=4, heads=4, kv_heads=2, intermediate=352, steps=300, lr=4e-3)


@dataclass(frozen=True)
class BuildSettings:
    """What every model of one build shares."""

    vocab_size: int = 4096
    seqlen: int = 256  # training context = the samples' evaluation window
    batch_size: int = 8  # small batches, many updates: more progress per token on a tiny budget
    seed: int = 0
    threads: int = 2
    warmup_steps: int = 50
    eval_every: int = 300
    max_documents: int | None = None  # None: every training module (a cap only for quick smoke builds)
    max_eval_windows: int | None = None  # None: every held-out window


def train_tokenizer(documents: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any text encodes, no unknown tokens) trained on ``documents``."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[DOCUMENT_SEPARATOR, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=DOCUMENT_SEPARATOR,
        eos_token=DOCUMENT_SEPARATOR,
        pad_token=PAD_TOKEN,
        model_max_length=4096,
    )


def make_model(plan: ModelPlan, tokenizer: PreTrainedTokenizerFast, settings: BuildSettings) -> LlamaForCausalLM:
    """A freshly initialised Llama-style model of the plan's shape (seeded)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=plan.hidden,
        intermediate_size=plan.intermediate,
        num_hidden_layers=plan.layers,
        num_attention_heads=plan.heads,
        num_key_value_heads=plan.kv_heads,
        max_position_embeddings=settings.seqlen,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(settings.seed)
    return LlamaForCausalLM(config)


def learning_rate(step: int, plan: ModelPlan, settings: BuildSettings) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < settings.warmup_steps:
        return plan.lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, plan.steps - settings.warmup_steps)
    return plan.lr * (0.1 + 0.45 * (1.0 + math.cos(math.pi * progress)))


def train(model: LlamaForCausalLM, train_ids: torch.Tensor, eval_windows: torch.Tensor, plan: ModelPlan,
          settings: BuildSettings) -> None:
    """Next-token training on random windows of the training ids, printing progress as it goes."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=plan.lr, betas=(0.9, 0.95), weight_decay=0.1)
    generator = torch.Generator().manual_seed(settings.seed)
    started = time.perf_counter()
    model.train()
    for step in range(plan.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, plan, settings)
        starts = torch.randint(0, train_ids.numel() - settings.seqlen, (settings.batch_size,), generator=generator)
        batch = torch.stack([train_ids[s : s + settings.seqlen] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % 25 == 0 or step == 0:
            elapsed = time.perf_counter() - started
            tokens_per_s = (step + 1) * batch.numel() / elapsed
            print(f"  {plan.name} step {step + 1}/{plan.steps} loss {loss.item():.3f} "
                  f"({tokens_per_s:,.0f} tok/s, {elapsed:.0f}s)", flush=True)
        if (step + 1) % settings.eval_every == 0 and step + 1 < plan.steps:
            model.eval()
            quick = evaluate_quality(model, eval_windows[:16])
            print(f"  {plan.name} step {step + 1}: held-out perplexity {quick.perplexity:.2f} (first 16 windows)",
                  flush=True)
            model.train()
    model.eval()


@torch.inference_mode()
def generate_examples(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast) -> dict[str, str]:
    """Greedy continuations of prompts typical of the corpus."""
    examples = {}
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=48, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        examples[prompt] = tokenizer.decode(out[0][ids.shape[1]:], skip_special_tokens=True)
    return examples


def model_card(plan: ModelPlan, info: dict, examples: dict[str, str]) -> str:
    """The model card README.md of one sample model."""
    generations = "\n".join(f"Prompt `{prompt!r}`:\n```python\n{prompt}{text}\n```\n" for prompt, text in examples.items())
    return f"""---
license: apache-2.0
library_name: transformers
pipeline_tag: text-generation
---
# SqueezeLab sample {plan.name}

A tiny Llama-style causal language model trained from scratch by `sample_models/build.py`, bundled
with SqueezeLab so that the app, the CLI and the tests work offline on a real (if small) trained model.

| | |
|---|---|
| architecture | LlamaForCausalLM: {plan.layers} layers, hidden {plan.hidden}, SwiGLU {plan.intermediate}, {plan.heads} heads ({plan.kv_heads} key/value heads, grouped-query), tied embeddings |
| parameters | {info['params']:,} |
| tokenizer | byte-level BPE, {info['vocab_size']} tokens, shared by the teacher and the student |
| context | {info['seqlen']} tokens |
| corpus | source of {info['train_modules_used']} top-level modules of the Python {info['python']} standard library (list in `sample_models/corpus.py`), {info['train_tokens']:,} tokens |
| held-out text | {len(HELDOUT_MODULES)} other stdlib modules ({', '.join(HELDOUT_MODULES)}), {info['heldout_tokens']:,} tokens |
| training | {info['steps']} steps of {info['batch_size']}x{info['seqlen']} tokens ({info['tokens_seen']:,} tokens seen), AdamW, peak lr {info['lr']}, warm-up + cosine, seed {info['seed']} |
| build time | {info['train_seconds']:.0f} s on {info['threads']} CPU threads ({info['machine']}) |
| held-out perplexity | **{info['heldout_perplexity']:.3f}** ({info['heldout_windows']} windows of {info['seqlen']} tokens, uniform baseline = {info['vocab_size']}) |
| held-out next-token accuracy | {100 * info['heldout_top1_acc']:.2f}% |

## Example generations (greedy, 48 new tokens)

{generations}
## Load

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("sample_models/{plan.name}")
tokenizer = AutoTokenizer.from_pretrained("sample_models/{plan.name}")
```
or `squeezelab eval --model sample:{plan.name}`.

License: Apache-2.0. The training text is the Python standard library (PSF license), read at build
time and not distributed with the model.
"""


def build_model(plan: ModelPlan, tokenizer: PreTrainedTokenizerFast, train_ids: torch.Tensor,
                eval_windows: torch.Tensor, settings: BuildSettings, out_dir: Path, modules_used: int) -> dict:
    """Train one model, measure it and write its folder atomically; returns its build info."""
    started = time.perf_counter()
    model = make_model(plan, tokenizer, settings)
    params = sum(p.numel() for p in model.parameters())
    print(f"{plan.name}: {params:,} parameters, {plan.steps} steps", flush=True)
    train(model, train_ids, eval_windows, plan, settings)
    train_seconds = time.perf_counter() - started
    quality = evaluate_quality(model, eval_windows)
    print(f"{plan.name}: held-out perplexity {quality.perplexity:.3f}, top-1 {100 * quality.top1_acc:.2f}% "
          f"({quality.windows} windows x {quality.seqlen}), trained in {train_seconds:.0f}s", flush=True)
    info = {
        "name": plan.name, "plan": asdict(plan), "params": params, "vocab_size": len(tokenizer),
        "seqlen": settings.seqlen, "batch_size": settings.batch_size, "steps": plan.steps, "lr": plan.lr,
        "seed": settings.seed, "threads": settings.threads, "tokens_seen": plan.steps * settings.batch_size * settings.seqlen,
        "train_tokens": int(train_ids.numel()), "heldout_tokens": int(eval_windows.numel()),
        "heldout_windows": quality.windows, "heldout_perplexity": quality.perplexity,
        "heldout_top1_acc": quality.top1_acc, "train_seconds": train_seconds,
        "python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
        "train_modules_used": modules_used,
    }
    examples = generate_examples(model, tokenizer)
    info["examples"] = examples
    write_folder(out_dir / plan.name, model, tokenizer, info, model_card(plan, info, examples))
    return info


def write_folder(final: Path, model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, info: dict, card: str) -> None:
    """Write the HF folder under a temporary name, then swap it into place."""
    temporary = final.with_name(f".{final.name}.building")
    shutil.rmtree(temporary, ignore_errors=True)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, max_new_tokens=64, do_sample=False,
    )
    model.save_pretrained(temporary, safe_serialization=True)
    tokenizer.save_pretrained(temporary)
    (temporary / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    (temporary / "README.md").write_text(card)
    previous = final.with_name(f".{final.name}.previous")
    shutil.rmtree(previous, ignore_errors=True)
    if final.exists():
        final.rename(previous)
    temporary.rename(final)
    shutil.rmtree(previous, ignore_errors=True)


def rewrite_cards(out_dir: Path, plans: tuple[ModelPlan, ...]) -> None:
    """Regenerate the example generations and model cards of already built models (no training)."""
    for plan in plans:
        folder = out_dir / plan.name
        info = json.loads((folder / "build_info.json").read_text())
        model = LlamaForCausalLM.from_pretrained(folder).eval()
        tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
        info["examples"] = generate_examples(model, tokenizer)
        (folder / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
        (folder / "README.md").write_text(model_card(ModelPlan(**info["plan"]), info, info["examples"]))
        print(f"{plan.name}: model card rewritten", flush=True)


def build(out_dir: Path, settings: BuildSettings, plans: tuple[ModelPlan, ...]) -> list[dict]:
    """The whole build: corpus, tokenizer, then each model in turn."""
    started = time.perf_counter()
    torch.set_num_threads(settings.threads)
    torch.use_deterministic_algorithms(True)
    documents = train_text().split(DOCUMENT_SEPARATOR)[: settings.max_documents]
    print(f"corpus: {len(documents)} training modules, {sum(map(len, documents)):,} characters", flush=True)
    tokenizer = train_tokenizer(documents, settings.vocab_size)
    train_ids = torch.tensor(tokenizer(DOCUMENT_SEPARATOR.join(documents))["input_ids"], dtype=torch.long)
    eval_ids = torch.tensor(tokenizer(heldout_text())["input_ids"], dtype=torch.long)
    eval_windows = windows(eval_ids, settings.seqlen, settings.max_eval_windows)
    print(f"tokenizer: {len(tokenizer)} tokens; train {train_ids.numel():,} tokens, "
          f"held-out {eval_ids.numel():,} tokens ({eval_windows.shape[0]} windows)", flush=True)
    infos = [build_model(plan, tokenizer, train_ids, eval_windows, settings, out_dir, len(documents)) for plan in plans]
    print(f"build finished in {time.perf_counter() - started:.0f}s", flush=True)
    return infos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the bundled sample teacher and student from scratch.")
    parser.add_argument("--out-dir", type=Path, default=SAMPLES_DIR, help="where the model folders go")
    parser.add_argument("--teacher-steps", type=int, default=TEACHER.steps)
    parser.add_argument("--student-steps", type=int, default=STUDENT.steps)
    parser.add_argument("--threads", type=int, default=BuildSettings.threads)
    parser.add_argument("--seed", type=int, default=BuildSettings.seed)
    parser.add_argument("--smoke", action="store_true", help="a tiny, seconds-long build (for tests)")
    parser.add_argument("--cards-only", action="store_true", help="only regenerate the model cards' examples")
    parser.add_argument("--models", nargs="+", choices=["teacher", "student"], default=["teacher", "student"],
                        help="which models to build (each one's training does not depend on the other)")
    args = parser.parse_args(argv)
    settings = BuildSettings(threads=args.threads, seed=args.seed)
    plans = (
        ModelPlan(**{**asdict(TEACHER), "steps": args.teacher_steps}),
        ModelPlan(**{**asdict(STUDENT), "steps": args.student_steps}),
    )
    if args.smoke:
        settings = BuildSettings(vocab_size=384, seqlen=32, batch_size=2, seed=args.seed, threads=args.threads,
                                 warmup_steps=1, eval_every=1000, max_documents=8, max_eval_windows=8)
        plans = tuple(ModelPlan(**{**asdict(p), "hidden": 32, "heads": 4, "kv_heads": 2, "intermediate": 64, "layers": 2,
                                      "steps": 2}) for p in plans)
    plans = tuple(plan for plan in plans if plan.name in args.models)
    if args.cards_only:
        rewrite_cards(args.out_dir, plans)
    else:
        build(args.out_dir, settings, plans)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
