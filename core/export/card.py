"""What every exported artifact says about itself: ``squeezelab.json`` and a model card ``README.md``.

``squeezelab.json`` holds the recipe, the measured metrics, the export check and the library
versions (machine-readable); the card says the same for people: what was done, what was measured
and how, whether the reload check passed, and the one call that loads the artifact back.
"""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = ("squeezelab", "torch", "transformers", "safetensors", "compressed-tensors", "gguf", "tokenizers")


def versions() -> dict[str, str]:
    """Versions of the libraries that wrote (and can read) the artifact; absent ones are left out."""
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def write_metadata(folder: Path, export: dict[str, Any], recipe: dict | None, metrics: dict | None) -> None:
    """Write ``squeezelab.json`` and ``README.md`` into ``folder`` (``export`` is ExportResult.as_dict())."""
    record = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "export": export,
              "recipe": recipe, "metrics": metrics, "versions": versions()}
    (folder / "squeezelab.json").write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    (folder / "README.md").write_text(model_card(export, recipe, metrics), encoding="utf-8")


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1e6:,.2f} MB"


def _what_was_done(recipe: dict | None, metrics: dict | None) -> list[str]:
    details = (metrics or {}).get("details") or {}
    method = details.get("method") or "none (the base model)"
    lines = [f"- Model: `{(recipe or {}).get('model', 'unknown')}`", f"- Steps: {method}"]
    for step in (recipe or {}).get("steps") or []:
        lines.append(f"  - `{json.dumps(step, default=str)}`")
    return lines


def _measured(metrics: dict | None, export: dict) -> list[str]:
    metrics = metrics or {}
    details = metrics.get("details") or {}
    where = (f"{details.get('text', '?')}, seqlen {details.get('seqlen', '?')}, {details.get('windows', '?')} windows, "
             f"{metrics.get('device', '?')}, {details.get('threads', '?')} threads")
    rows = ["| figure | value |", "|---|---|"]
    if metrics.get("perplexity") is not None:
        base = metrics.get("base_perplexity")
        rows.append(f"| perplexity ({where}) | {metrics['perplexity']:.4f}"
                    + (f" (base model {base:.4f}, same windows)" if base else "") + " |")
    params = metrics.get("params")
    bits = f", {8 * export['weights_bytes'] / params:.2f} bits per weight" if params else ""
    rows.append(f"| weights file(s) | {_mb(export.get('weights_bytes'))}{bits} |")
    if metrics.get("prefill_ms") is not None:
        rows.append(f"| speed in SqueezeLab (batch 1) | prefill {metrics['prefill_ms']:.1f} ms, decode "
                    f"{metrics.get('decode_tok_s') or 0:.1f} tokens/s, kernel: {metrics.get('kernel')} |")
    return rows


def _check(export: dict) -> list[str]:
    if export.get("perplexity_after") is None:
        return ["Not checked."]
    before, after = export["perplexity_before"], export["perplexity_after"]
    reference = export.get("reference_perplexity") or before
    verdict = "passed" if export.get("check_passed") else "FAILED"
    lines = [f"Reloaded from disk the way the section below shows and re-evaluated on {export['windows']} windows of "
             f"{export['seqlen']} tokens: perplexity {before:.4f} before export, {after:.4f} after reload "
             f"({100 * (after / reference - 1):+.3f}% against what the file should hold; tolerance "
             f"{100 * export['tolerance']:.2f}%) - **{verdict}**. The tokenizer reloads "
             f"{'identically' if export.get('tokenizer_match') else 'DIFFERENTLY'}."]
    if export.get("reference_perplexity") is not None:
        lines.append(f"The export re-rounded some weights (see notes): the file should hold a model of perplexity "
                     f"{reference:.4f} on these windows, and the reloaded one is compared with that.")
    return lines


def _how_to_load(export: dict) -> list[str]:
    name = Path(export.get("path") or ".").name
    if export["format"] == "gguf":
        file = export.get("gguf_file") or "model.gguf"
        return ["```bash", f"llama-cli -m {name}/{file} -p 'Hello'        # llama.cpp",
                f"echo 'FROM ./{file}' > Modelfile && ollama create my-model -f Modelfile   # ollama", "```",
                "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                f"model = AutoModelForCausalLM.from_pretrained('{name}', gguf_file='{file}')  # dequantized",
                f"tokenizer = AutoTokenizer.from_pretrained('{name}', gguf_file='{file}')",
                "# GPT-2, GPT-NeoX and Falcon files (transformers does not rebuild them faithfully): SqueezeLab",
                f"from core.models import load_exported; loaded = load_exported('{name}')", "```"]
    if export["format"] == "compressed-tensors":
        return ["```python", "# pip install compressed-tensors", "from transformers import AutoModelForCausalLM",
                f"model = AutoModelForCausalLM.from_pretrained('{name}')", "```",
                f"or serve it: `vllm serve {name}`"]
    if export.get("squeezelab_format"):
        return ["SqueezeLab's stored form (packed codes / sparse weights; `quantization_config.quant_method` is "
                "`squeezelab`), loaded with SqueezeLab installed:", "```python",
                "from core.models import load_exported",
                f"loaded = load_exported('{name}')   # loaded.model, loaded.tokenizer", "```"]
    return ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f"model = AutoModelForCausalLM.from_pretrained('{name}')",
            f"tokenizer = AutoTokenizer.from_pretrained('{name}')", "```"]


def model_card(export: dict, recipe: dict | None, metrics: dict | None) -> str:
    """The README.md of an exported artifact."""
    tags = ["squeezelab", export["format"]] + (["gguf"] if export["format"] == "gguf" else [])
    lines = ["---", "library_name: transformers", "tags:", *[f"- {tag}" for tag in dict.fromkeys(tags)], "---", "",
             f"# {(recipe or {}).get('model', 'model')} compressed with SqueezeLab ({export['format']})", "",
             "## What was done", "", *_what_was_done(recipe, metrics), "",
             f"- Format: {export['format']}" + (f" ({export['gguf_file']})" if export.get("gguf_file") else ""),
             *[f"- {note}" for note in export.get("notes") or []], "",
             "## Measured", "", *_measured(metrics, export), "", "## Export check", "", *_check(export), "",
             "## How to load", "", *_how_to_load(export), "",
             "Made with SqueezeLab; `squeezelab.json` holds the recipe, the metrics and the library versions.", ""]
    return "\n".join(lines)
