"""The command line: exit codes 0 / 1 / 2, JSON and table output, history, and no stray rows."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import core.recipe.pipeline
from core.cli import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_OK
from core.store import RESULT_FIELDS, ResultStore
from tests.helpers import cli_exit as call

REPO_ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("results_env")




def eval_args(model: str, text: Path | str, results: Path, *extra: str) -> list[str]:
    return ["eval", "--model", model, "--text", str(text), "--seqlen", "16", "--max-windows", "2", "--no-latency",
            "--results-dir", str(results), *extra]


def assert_bad_input(code: int, err: str, *needles: str) -> None:
    assert code == EXIT_BAD_INPUT
    assert err.strip(), "a refusal must say why on stderr"
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err


def test_eval_json_prints_one_row_with_every_field(llama, text_file, results_env, capsys):
    code = call(eval_args(llama, text_file, results_env, "--json"))
    out, err = capsys.readouterr()
    assert code == EXIT_OK, err
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1
    row = json.loads(lines[0])
    assert set(RESULT_FIELDS) <= set(row)
    assert row["status"] == "ok"
    assert row["model"] == llama
    assert row["perplexity"] > 1
    assert row["prefill_ms"] is None  # --no-latency
    assert row["details"]["seqlen"] == 16 and row["details"]["windows"] == 2
    assert "Traceback" not in err
    assert [r.id for r in ResultStore(results_env).list()] == [row["id"]]


def test_eval_table_and_history(llama, text_file, results_env, capsys):
    assert call(eval_args(llama, text_file, results_env)) == EXIT_OK
    out, err = capsys.readouterr()
    assert "perplexity" in out
    assert "2 windows x 16 tokens" in out
    assert "dense float32" in out
    assert "evaluate" in err  # progress goes to stderr, not into the table
    (row,) = ResultStore(results_env).list()
    assert row.id in out

    assert call(["history", "--results-dir", str(results_env)]) == EXIT_OK
    out, _ = capsys.readouterr()
    assert row.id in out and "ok" in out

    assert call(["history", "--csv", "--results-dir", str(results_env)]) == EXIT_OK
    out, _ = capsys.readouterr()
    header, *records = list(csv.reader(io.StringIO(out)))
    assert header == list(RESULT_FIELDS)
    assert len(records) == 1
    assert records[0][0] == row.id
    assert records[0][RESULT_FIELDS.index("recipe")] == row.recipe  # multi-line YAML survives quoting


@pytest.mark.parametrize(("switch", "value"), [("off", False), ("on", True), ("auto", None)])
def test_eval_compile_option_is_recorded_in_the_recipe(switch, value, llama, text_file, results_env, capsys):
    code = call(eval_args(llama, text_file, results_env, "--compile", switch, "--json"))
    out, err = capsys.readouterr()
    assert code == EXIT_OK, err
    assert yaml.safe_load(json.loads(out)["recipe"])["evaluation"]["compile"] is value


def test_eval_with_compile_off_says_so_beside_the_speed(llama, text_file, results_env, capsys):
    argv = [a for a in eval_args(llama, text_file, results_env, "--compile", "off") if a != "--no-latency"]
    assert call(argv) == EXIT_OK
    out, _ = capsys.readouterr()
    assert "compile off (asked)" in out and "decode loop" in out
    row = ResultStore(results_env).list()[0]
    assert "compile off (asked)" in row.details["latency"]["loop_notes"]


def test_history_of_an_empty_store(results_env, capsys):
    assert call(["history"]) == EXIT_OK  # the env variable picks the folder
    out, _ = capsys.readouterr()
    assert "no results yet" in out
    assert call(["history", "--csv"]) == EXIT_OK
    out, _ = capsys.readouterr()
    assert out.splitlines() == [",".join(RESULT_FIELDS)]


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing-model", "does-not-exist"),
        ("seqlen-1", "seqlen"),
        ("max-windows-negative", "max_windows"),
        ("missing-recipe", "no-such-recipe.yaml"),
        ("recipe-unknown-key", "modle"),
        ("recipe-unknown-eval-key", "widows"),
        ("recipe-bad-value", "evaluation.seqlen"),
        ("recipe-step", "temperature must be a number > 0"),
        ("recipe-bad-prune", "sparsity"),
        ("recipe-invalid-yaml", "not valid YAML"),
    ],
)
def test_bad_input_before_a_run_exits_2_and_writes_no_row(case, needle, llama, text_file, results_env, tmp_path,
                                                           capsys):
    recipe = tmp_path / "recipe.yaml"
    contents = {
        "recipe-unknown-key": f"model: {llama}\nmodle: x\n",
        "recipe-unknown-eval-key": f"model: {llama}\nevaluation: {{seqlen: 16, widows: 2}}\n",
        "recipe-bad-value": f"model: {llama}\nevaluation: {{seqlen: 1}}\n",
        "recipe-step": f"model: {llama}\nsteps:\n  - distill: {{temperature: 0}}\n",
        "recipe-bad-prune": f"model: {llama}\nsteps:\n  - prune: {{method: wanda, sparsity: 2}}\n",
        "recipe-invalid-yaml": "model: [unclosed\n",
    }
    if case in contents:
        recipe.write_text(contents[case])
    argv = {
        "missing-model": eval_args(str(tmp_path / "does-not-exist"), text_file, results_env),
        "seqlen-1": [*eval_args(llama, text_file, results_env), "--seqlen", "1"],
        "max-windows-negative": [*eval_args(llama, text_file, results_env), "--max-windows", "-1"],
        "missing-recipe": ["run", str(tmp_path / "no-such-recipe.yaml"), "--results-dir", str(results_env)],
    }.get(case, ["run", str(recipe), "--results-dir", str(results_env)])

    code = call(argv)
    out, err = capsys.readouterr()
    assert_bad_input(code, err, needle)
    assert out == ""
    assert ResultStore(results_env).list() == []


@pytest.mark.parametrize(
    "argv",
    [
        ["frobnicate"],
        ["eval", "--bogus"],
        ["eval", "--seqlen", "sixteen"],
        ["run"],
        [],
    ],
    ids=["unknown-subcommand", "unknown-option", "non-integer-seqlen", "run-without-recipe", "no-subcommand"],
)
def test_argument_errors_exit_2_without_usage_dump(argv, results_env, capsys):
    code = call(argv)
    out, err = capsys.readouterr()
    assert_bad_input(code, err, "squeezelab:")
    assert "usage:" not in err
    assert out == ""
    assert not (results_env / "results.db").exists()


@pytest.mark.parametrize("case", ["missing-text", "unknown-device"])
def test_bad_input_found_after_the_run_starts_exits_2(case, llama, text_file, results_env, tmp_path, capsys):
    argv = {
        "missing-text": eval_args(llama, tmp_path / "missing.txt", results_env),
        "unknown-device": [*eval_args(llama, text_file, results_env), "--device", "tpu"],
    }[case]
    code = call(argv)
    _, err = capsys.readouterr()
    assert_bad_input(code, err, "missing.txt" if case == "missing-text" else "tpu")
    # Both are checked before a run starts, so nothing is written to the store.
    assert ResultStore(results_env).list() == []


def test_internal_error_exits_1(llama, text_file, results_env, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(core.recipe.pipeline, "run", broken)
    code = call(eval_args(llama, text_file, results_env, "--json"))
    out, err = capsys.readouterr()
    assert code == EXIT_INTERNAL
    assert "internal error" in err and "RuntimeError" in err
    assert out == ""


def test_run_recipe_json(llama, text_file, results_env, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": llama,
        "evaluation": {"text": str(text_file), "seqlen": 16, "max_windows": 2, "latency": False},
    }))
    code = call(["run", str(recipe), "--json", "--results-dir", str(results_env)])
    out, err = capsys.readouterr()
    assert code == EXIT_OK, err
    row = json.loads(out)
    assert set(RESULT_FIELDS) <= set(row)
    assert row["status"] == "ok"
    assert row["details"]["windows"] == 2 and row["details"]["seqlen"] == 16
    stored = yaml.safe_load(row["recipe"])
    assert stored["model"] == llama and stored["evaluation"]["max_windows"] == 2
    assert [r.id for r in ResultStore(results_env).list()] == [row["id"]]


def test_run_recipe_json_file(llama, text_file, results_env, tmp_path, capsys):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({
        "model": llama,
        "evaluation": {"text": str(text_file), "seqlen": 16, "max_windows": 1, "latency": False},
    }))
    assert call(["run", str(recipe), "--json", "--results-dir", str(results_env)]) == EXIT_OK
    row = json.loads(capsys.readouterr().out)
    assert row["details"]["windows"] == 1


def test_console_module_exit_code_for_a_missing_model(tmp_path):
    env = {**os.environ, "SQUEEZELAB_RESULTS_DIR": str(tmp_path / "results"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "core.cli", "eval", "--model", "./does-not-exist"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    assert "does-not-exist" in proc.stderr
    assert proc.stderr.startswith("squeezelab:")
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


# ---- the opt-ins the refusals name: --allow-pickle, --trust-remote-code -----------------------------------------


def test_a_pickle_only_model_is_refused_without_allow_pickle_and_loads_with_it(tmp_path, text_file, results_env,
                                                                                capsys):
    from tests.helpers import pickle_only_folder

    folder = str(pickle_only_folder(tmp_path / "pickled", family="llama"))
    assert_bad_input(call(eval_args(folder, text_file, results_env)), capsys.readouterr().err, "--allow-pickle")
    assert ResultStore(results_env).list() == []  # refused from the folder's files, before any row is written
    code = call(eval_args(folder, text_file, results_env, "--allow-pickle", "--json"))
    out, err = capsys.readouterr()
    assert code == EXIT_OK, err
    row = json.loads(out)
    assert row["status"] == "ok" and 1 < row["perplexity"] < 1000
    assert yaml.safe_load(row["recipe"])["allow_pickle"] is True  # the stored recipe repeats the choice

    recipe = tmp_path / "stored.yaml"
    recipe.write_text(row["recipe"])
    assert call(["run", str(recipe), "--json", "--results-dir", str(results_env)]) == EXIT_OK, capsys.readouterr().err
    capsys.readouterr()
    recipe.write_text(yaml.safe_dump({**yaml.safe_load(row["recipe"]), "allow_pickle": False}))
    assert_bad_input(call(["run", str(recipe), "--results-dir", str(results_env)]), capsys.readouterr().err,
                     "pickle")
    assert call(["run", str(recipe), "--allow-pickle", "--results-dir", str(results_env)]) == EXIT_OK  # an override


@pytest.mark.parametrize("command", ["eval", "prune", "quantize", "distill", "run", "export"])
def test_every_command_that_loads_a_model_takes_the_opt_ins(command):
    from core.cli.parser import build_parser

    source = {"run": ["recipe.yaml"], "export": ["sample:teacher", "--format", "hf", "--out", "x"]}.get(command, [])
    args = build_parser().parse_args([command, *source, "--allow-pickle", "--trust-remote-code"])
    assert args.allow_pickle is True and args.trust_remote_code is True
    defaults = build_parser().parse_args([command, *source])
    assert defaults.allow_pickle is False and defaults.trust_remote_code is False


def test_a_model_that_needs_remote_code_is_refused_with_the_flag_to_pass(tmp_path, text_file, results_env, capsys):
    from tests.helpers import remote_code_folder

    folder = str(remote_code_folder(tmp_path / "custom"))
    assert_bad_input(call(eval_args(folder, text_file, results_env)), capsys.readouterr().err, "--trust-remote-code")
