"""Generating text: the decoders write what transformers' own greedy search writes; the command line streams it
for a model reference, a stored result rebuilt from its recipe, and an exported result's artifact."""

from __future__ import annotations

import json

import pytest
import torch

from core.cli import EXIT_BAD_INPUT, EXIT_OK
from core.errors import SpecError
from core.generate import generate, generate_stream, load_for_generation
from core.models import load
from core.store import ResultStore
from tests.helpers import cli_exit as call

PROMPT = "def read_config(path):\n"


@pytest.fixture(scope="module")
def teacher():
    return load("sample:teacher", device="cpu")


pytestmark = pytest.mark.usefixtures("results_env")




def test_greedy_text_is_what_transformers_greedy_search_writes(teacher):
    ids = teacher.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        reference = teacher.model.generate(ids, max_new_tokens=12, do_sample=False, min_new_tokens=12,
                                           pad_token_id=teacher.tokenizer.eos_token_id)
    expected = teacher.tokenizer.decode(reference[0, ids.shape[1]:], skip_special_tokens=True)
    pieces = list(generate_stream(teacher.model, teacher.tokenizer, PROMPT, 12, chat=False))
    assert "".join(piece.text for piece in pieces) == expected
    last = pieces[-1]
    assert last.done and last.stop == "max_new_tokens" and last.tokens == 12 == len(pieces)
    assert last.prompt_tokens == ids.shape[1] and last.prefill_ms > 0 and last.decode_tok_s > 0
    assert "decode:" in last.loop and not any(piece.done for piece in pieces[:-1])


def test_sampling_repeats_for_a_seed(teacher):
    first = generate(teacher.model, teacher.tokenizer, PROMPT, 10, temperature=1.0, seed=3, chat=False)
    again = generate(teacher.model, teacher.tokenizer, PROMPT, 10, temperature=1.0, seed=3, chat=False)
    assert first.text == again.text and first.tokens == 10


def test_generation_stops_at_the_end_of_text_token(teacher, monkeypatch):
    greedy = generate(teacher.model, teacher.tokenizer, PROMPT, 1, chat=False)
    first_id = teacher.tokenizer(greedy.text, add_special_tokens=False)["input_ids"][0]
    monkeypatch.setattr(teacher.model.generation_config, "eos_token_id", first_id)
    stopped = generate(teacher.model, teacher.tokenizer, PROMPT, 8, chat=False)
    assert stopped.stop == "eos" and stopped.tokens == 0 and stopped.text == ""


@pytest.mark.parametrize(("prompt", "tokens", "needle"), [("   ", 4, "prompt is empty"), (PROMPT, 0, "max_new_tokens"),
                                                          (PROMPT * 200, 8, "context")])
def test_bad_requests_are_refused_with_what_to_do(teacher, prompt, tokens, needle):
    with pytest.raises(SpecError, match=needle):
        generate(teacher.model, teacher.tokenizer, prompt, tokens, chat=False)


def test_the_command_streams_the_text_and_says_how_fast(capsys):
    assert call(["generate", "--prompt", PROMPT, "--max-new-tokens", "6", "--compile", "off"]) == EXIT_OK
    out, err = capsys.readouterr()
    assert out.strip() and "tok/s decode" in err and "sample:teacher" in err and "decode:" in err
    assert call(["generate", "--prompt", PROMPT, "--max-new-tokens", "6", "--json"]) == EXIT_OK
    summary = json.loads(capsys.readouterr().out)
    assert summary["tokens"] == 6 and summary["text"] == out.rstrip("\n")[:len(summary["text"])]
    assert summary["stop"] == "max_new_tokens" and summary["loop"].startswith("prefill:")


@pytest.mark.parametrize(("argv", "needle"), [
    (["generate", "--prompt", " "], "prompt is empty"),
    (["generate", "--model", "20250101-120000-abcdef", "--prompt", "x"], "no result with id"),
    (["generate", "--prompt", "x", "--max-new-tokens", "100000"], "context"),
])
def test_the_command_refuses_bad_input_with_exit_2(argv, needle, capsys):
    assert call(argv) == EXIT_BAD_INPUT
    _, err = capsys.readouterr()
    assert needle in err and "Traceback" not in err


def test_a_stored_result_generates_from_its_recipe_and_from_its_export(llama, text_file, results_env, tmp_path,
                                                                       capsys):
    common = ["--text", str(text_file), "--seqlen", "16", "--max-windows", "2", "--no-latency", "--json"]
    assert call(["quantize", "--model", llama, "--method", "rtn", "--bits", "8", *common]) == EXIT_OK
    quantized = json.loads(capsys.readouterr().out)["id"]
    out_dir = tmp_path / "exported"
    assert call(["export", quantized, "--format", "hf", "--out", str(out_dir), "--check-windows", "2",
                 "--json"]) == EXIT_OK
    exported = json.loads(capsys.readouterr().out)["id"]
    rebuilt = load_for_generation(quantized, results_env)
    from_file = load_for_generation(exported, results_env)
    assert "recipe's steps run again" in rebuilt.label and "exported hf artifact" in from_file.label
    texts = [generate(chosen.loaded.model, chosen.loaded.tokenizer, "def x", 8, chat=False).text
             for chosen in (rebuilt, from_file)]
    assert texts[0] == texts[1]  # the exported file holds the same quantized weights
    assert call(["generate", "--model", exported, "--prompt", "def x", "--max-new-tokens", "4"]) == EXIT_OK
    assert ResultStore(results_env).get(exported).status == "ok"
    capsys.readouterr()
    assert call(["export", quantized, "--format", "gguf", "--out", str(tmp_path / "gguf"), "--check-windows", "2",
                 "--json"]) == EXIT_OK
    as_gguf = load_for_generation(json.loads(capsys.readouterr().out)["id"], results_env)
    assert "exported gguf artifact" in as_gguf.label and as_gguf.loaded.source.kind == "gguf"
    assert generate(as_gguf.loaded.model, as_gguf.loaded.tokenizer, "def x", 8, chat=False).tokens == 8
