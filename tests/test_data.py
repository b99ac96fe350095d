"""Text sources, windows and calibration batches: exact expectations on hand-made inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

import core.data
from core.data import calibration_batches, load_text, read_text_file, tokenize, windows
from core.errors import TextSourceError
from tests.helpers import tiny_tokenizer

# --- windows ---------------------------------------------------------------------------------


def test_windows_are_non_overlapping_and_drop_the_tail():
    ids = torch.arange(11)  # 0..10
    got = windows(ids, 4)
    assert got.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert got.dtype == ids.dtype


def test_windows_exact_multiple_keeps_every_token():
    assert windows(torch.arange(8), 4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_max_windows_caps_the_count_from_the_start():
    ids = torch.arange(40)
    assert windows(ids, 4, max_windows=3).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    # A cap above the available count changes nothing.
    assert windows(ids, 4, max_windows=100).shape == (10, 4)


def test_windows_too_short_text_names_the_minimum():
    with pytest.raises(TextSourceError) as info:
        windows(torch.arange(3), 4)
    message = str(info.value)
    assert "3 tokens" in message
    assert "at least 4" in message


@pytest.mark.parametrize("seqlen", [1, 0, -5])
def test_windows_reject_seqlen_below_two(seqlen):
    with pytest.raises(TextSourceError, match="at least 2"):
        windows(torch.arange(100), seqlen)


def test_windows_reject_max_windows_below_one():
    with pytest.raises(TextSourceError, match="max_windows"):
        windows(torch.arange(100), 4, max_windows=0)


# --- calibration batches -----------------------------------------------------------------------


def test_calibration_batches_shape_and_contiguous_rows():
    ids = torch.arange(1000, 1100)  # distinct values, so a row identifies its start
    batch = calibration_batches(ids, samples=6, seqlen=8, seed=0)
    assert batch.shape == (6, 8)
    for row in batch:
        start = int(row[0]) - 1000
        assert row.tolist() == ids[start : start + 8].tolist()


def test_calibration_batches_are_seeded():
    ids = torch.arange(500)
    first = calibration_batches(ids, samples=8, seqlen=16, seed=0)
    again = calibration_batches(ids, samples=8, seqlen=16, seed=0)
    other = calibration_batches(ids, samples=8, seqlen=16, seed=1)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_calibration_batches_do_not_touch_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    calibration_batches(torch.arange(200), samples=4, seqlen=8, seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_calibration_batches_need_more_tokens_than_seqlen():
    with pytest.raises(TextSourceError, match="seqlen=8"):
        calibration_batches(torch.arange(8), samples=2, seqlen=8)


def test_calibration_batches_need_a_sample():
    with pytest.raises(TextSourceError, match="at least 1 sample"):
        calibration_batches(torch.arange(100), samples=0, seqlen=8)


# --- tokenize ----------------------------------------------------------------------------------


def test_tokenize_returns_1d_ids_beyond_the_context_and_restores_the_limit():
    tokenizer = tiny_tokenizer()
    tokenizer.model_max_length = 16
    ids = tokenize(tokenizer, "def value(self): return x\n" * 20)
    assert ids.dim() == 1
    assert ids.dtype == torch.long
    assert ids.numel() > 16
    assert tokenizer.model_max_length == 16
    assert tokenizer.decode(ids.tolist()) == "def value(self): return x\n" * 20


# --- text sources ------------------------------------------------------------------------------


def test_load_text_txt(tmp_path: Path):
    path = tmp_path / "notes.txt"
    path.write_text("hello\nworld\n", encoding="utf-8")
    text = load_text(str(path))
    assert text.text == "hello\nworld\n"
    assert text.name == str(path)


def test_load_text_parquet_joins_rows_and_blanks_missing(tmp_path: Path):
    path = tmp_path / "rows.parquet"
    pd.DataFrame({"text": ["first", None, "third"], "other": [1, 2, 3]}).to_parquet(path)
    assert load_text(str(path)).text == "first\n\n\n\nthird"


def test_load_text_parquet_without_text_column_lists_columns(tmp_path: Path):
    path = tmp_path / "rows.parquet"
    pd.DataFrame({"content": ["a", "b"]}).to_parquet(path)
    with pytest.raises(TextSourceError) as info:
        load_text(str(path))
    assert "no column 'text'" in str(info.value)
    assert "content" in str(info.value)


def test_load_text_jsonl_skips_blank_lines(tmp_path: Path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"text": "a"}) + "\n\n" + json.dumps({"text": "b", "id": 2}) + "\n")
    assert load_text(str(path)).text == "a\n\nb"


def test_load_text_jsonl_bad_line_names_its_number(tmp_path: Path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"text": "b"}) + "\n{not json\n")
    with pytest.raises(TextSourceError, match="line 3"):
        load_text(str(path))


def test_load_text_jsonl_line_without_text_field(tmp_path: Path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"body": "a"}) + "\n")
    with pytest.raises(TextSourceError, match=r"line 1: .*'text' field"):
        load_text(str(path))


def test_load_text_unknown_suffix_lists_supported_ones(tmp_path: Path):
    path = tmp_path / "rows.csv"
    path.write_text("text\nhello\n")
    with pytest.raises(TextSourceError) as info:
        read_text_file(path)
    for suffix in (".txt", ".parquet", ".jsonl"):
        assert suffix in str(info.value)


def test_load_text_missing_file_says_what_is_accepted(tmp_path: Path):
    missing = tmp_path / "absent.txt"
    with pytest.raises(TextSourceError) as info:
        load_text(str(missing))
    message = str(info.value)
    assert str(missing) in message
    assert "sample" in message
    assert "wikitext2" in message


def test_load_text_sample_is_the_heldout_stdlib_text():
    text = load_text("sample")
    assert text.name == "sample"
    assert len(text.text) > 10_000
    assert "def " in text.text


def test_load_text_default_uses_the_models_default():
    assert load_text("default", default="sample").text == load_text("sample").text
    assert load_text("  sample  ").name == "sample"


@pytest.mark.shared_data
@pytest.mark.skipif(not core.data.wikitext2_available(),
                    reason="WikiText-2 raw test parquet not found (set SQUEEZELAB_DATA_DIR or add ../shared/data)")
def test_load_text_wikitext2_from_shared_data():
    text = load_text("wikitext2")
    assert text.name == "wikitext2"
    assert len(text.text) > 1_000_000  # the raw test split is about 1.3 MB
    assert "\n\n" in text.text


# --- what is text: UTF-8, not empty, not mostly control characters ---------------------------


def test_decode_text_drops_a_utf8_byte_order_mark():
    assert core.data.decode_text(b"\xef\xbb\xbfdef x(): pass\n", "a.txt") == "def x(): pass\n"


def test_decode_text_names_the_byte_and_line_and_how_to_convert():
    raw = "first line\nsecond caf\u00e9\n".encode("latin-1")
    with pytest.raises(TextSourceError) as info:
        core.data.decode_text(raw, "notes.txt")
    message = str(info.value)
    assert "notes.txt is not UTF-8 text" in message
    assert f"byte {raw.index(0xE9)}, on line 2" in message
    assert "iconv -f latin1 -t utf-8 notes.txt > notes.utf8.txt" in message


@pytest.mark.parametrize(("encoding", "named"), [("utf-16", "UTF-16"), ("utf-32", "UTF-32")])
def test_decode_text_refuses_utf16_and_utf32_by_their_byte_order_mark(encoding, named):
    with pytest.raises(TextSourceError, match=f"{named}.*iconv -f {named}"):
        core.data.decode_text("def x(): pass\n".encode(encoding), "a.txt")


def test_decode_text_calls_random_bytes_binary():
    import random

    with pytest.raises(TextSourceError, match="a.bin is binary data, not text"):
        core.data.decode_text(random.Random(0).randbytes(2000), "a.bin")


def test_check_text_keeps_tabs_newlines_and_form_feeds():
    text = "def x():\n\treturn 1\r\n\f\n" * 50
    assert core.data.check_text(text, "a.txt") == text


def test_check_text_refuses_more_than_five_percent_control_characters():
    body = "x" * 95
    assert core.data.check_text(body + "\x01" * 4, "a.txt")  # 4%: text with a few stray bytes
    with pytest.raises(TextSourceError, match="6% of its 101 characters are control characters"):
        core.data.check_text(body + "\x01" * 6, "a.txt")


def test_check_text_recognises_utf16_without_its_byte_order_mark():
    with pytest.raises(TextSourceError, match="iconv -f UTF-16LE"):
        core.data.check_text("def x(): pass\n".encode("utf-16-le").decode("utf-8"), "a.txt")


@pytest.mark.parametrize(("content", "phrase"), [("", "it is empty"), (" \n\t ", "only whitespace")])
def test_check_text_refuses_an_empty_text(content, phrase):
    with pytest.raises(TextSourceError, match=phrase):
        core.data.check_text(content, "a.txt")


def test_check_source_reads_a_file_once_and_again_after_it_changes(tmp_path: Path):
    path = tmp_path / "eval.txt"
    path.write_text("first version of the text\n", encoding="utf-8")
    core.data.check_source(str(path))
    assert load_text(str(path)).text == "first version of the text\n"
    path.write_bytes("caf\u00e9 and more\n".encode("latin-1"))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    with pytest.raises(TextSourceError, match="not UTF-8"):
        core.data.check_source(str(path))


def test_check_source_refuses_a_folder_with_a_text_suffix(tmp_path: Path):
    (tmp_path / "eval.txt").mkdir()
    with pytest.raises(TextSourceError, match="is a folder"):
        core.data.check_source(str(tmp_path / "eval.txt"))


def test_load_text_jsonl_keeps_a_line_separator_inside_a_record(tmp_path: Path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"text": "a\u2028b"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert load_text(str(path)).text == "a\u2028b"


@pytest.mark.parametrize("value", [5, None, ["a"]])
def test_load_text_jsonl_text_must_be_a_string(tmp_path: Path, value):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"text": value}) + "\n")
    with pytest.raises(TextSourceError, match="line 1: 'text' must be a string"):
        load_text(str(path))


def test_load_text_parquet_of_numbers_or_damaged_bytes_is_refused(tmp_path: Path):
    numbers = tmp_path / "numbers.parquet"
    pd.DataFrame({"text": [1, 2]}).to_parquet(numbers)
    with pytest.raises(TextSourceError, match="holds int64 values"):
        load_text(str(numbers))
    damaged = tmp_path / "damaged.parquet"
    damaged.write_bytes(numbers.read_bytes()[:40])
    with pytest.raises(TextSourceError, match="not a readable Parquet file"):
        load_text(str(damaged))
