import json
from pathlib import Path

import pytest

from selfmem.common.config import DataConfig
from selfmem.common.data import (
    SPLITS,
    DataError,
    Example,
    convert_parallel_tsv,
    load_split,
    read_examples,
    remove_bpe,
)

ROOT = Path(__file__).parent
DEMO_DIR = ROOT.parent / "data" / "demo"
DEMO_DEV = DEMO_DIR / "dev.jsonl"
SUM_DIR = ROOT / "fixtures" / "debian_sum"
SUM_DEV = SUM_DIR / "dev.jsonl"


def _first_record(path):
    with open(path, encoding="utf-8") as f:
        return json.loads(f.readline())


def _write_lines(tmp_path, lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _error(path, *args, **kwargs):
    with pytest.raises(DataError) as info:
        read_examples(path, *args, **kwargs)
    return str(info.value)


GOOD = json.dumps({"src": "a", "trg": "b"})


# --- good data ------------------------------------------------------------------------


def test_read_demo_dev():
    examples = read_examples(DEMO_DEV, "src", "trg")
    assert len(examples) == 300
    first = _first_record(DEMO_DEV)
    assert examples[0] == Example(first["src"], first["trg"])
    assert examples[0].source == "... the field contains a data value that does not lie between the two values x and y."
    assert all(isinstance(e, Example) for e in examples)


def test_max_examples():
    examples = read_examples(DEMO_DEV, "src", "trg", max_examples=5)
    assert len(examples) == 5
    assert examples == read_examples(DEMO_DEV, "src", "trg")[:5]


def test_max_examples_stops_before_a_bad_line(tmp_path):
    path = _write_lines(tmp_path, [GOOD, GOOD, "not json"])
    assert read_examples(path, "src", "trg", max_examples=2) == [Example("a", "b")] * 2


def test_read_summarization_fields():
    examples = read_examples(SUM_DEV, "document", "summary")
    assert len(examples) == 40
    first = _first_record(SUM_DEV)
    assert examples[0] == Example(first["document"], first["summary"])


def test_load_split_translation():
    config = DataConfig(dir=str(DEMO_DIR))
    assert load_split(config, "dev") == read_examples(DEMO_DEV, "src", "trg")
    assert len(load_split(config, "test")) == 300
    config.max_examples = 7
    assert len(load_split(config, "train")) == 7


def test_load_split_summarization():
    config = DataConfig(
        dir=str(SUM_DIR), task="summarization", source_field="document", target_field="summary", metric="rouge"
    )
    examples = load_split(config, "dev")
    assert examples == read_examples(SUM_DEV, "document", "summary")
    assert len(load_split(config, "train")) == 300


def test_load_split_unknown_split():
    with pytest.raises(ValueError) as info:
        load_split(DataConfig(dir=str(DEMO_DIR)), "valid")
    assert str(info.value) == "unknown split 'valid'; valid splits: train, dev, test"
    assert SPLITS == ("train", "dev", "test")


def test_load_split_missing_file(tmp_path):
    with pytest.raises(DataError) as info:
        load_split(DataConfig(dir=str(tmp_path)), "dev")
    assert str(info.value) == f"{tmp_path / 'dev.jsonl'}: dataset file not found (data.dir is {tmp_path})"


def test_unicode_and_crlf(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_bytes(
        (json.dumps({"src": "Grüße\u2028zwei", "trg": "日本"}, ensure_ascii=False) + "\r\n").encode("utf-8")
        + (json.dumps({"src": "x", "trg": "y"}) + "\n").encode("utf-8")
    )
    assert read_examples(path, "src", "trg") == [Example("Grüße\u2028zwei", "日本"), Example("x", "y")]


def test_empty_target_allowed(tmp_path):
    path = _write_lines(tmp_path, [json.dumps({"src": "a", "trg": ""})])
    assert read_examples(path, "src", "trg") == [Example("a", "")]


def test_extra_fields_ignored(tmp_path):
    path = _write_lines(tmp_path, [json.dumps({"id": 3, "src": "a", "trg": "b"})])
    assert read_examples(path, "src", "trg") == [Example("a", "b")]


# --- dialogue -------------------------------------------------------------------------


def _dialogue_dir(tmp_path):
    record = {"context": ["hi", "hello there", "how are you?"], "response": "fine"}
    _write_lines(tmp_path, [json.dumps(record)], "dev.jsonl")
    return tmp_path


def test_dialogue_turns_joined(tmp_path):
    config = DataConfig(
        dir=str(_dialogue_dir(tmp_path)), task="dialogue", source_field="context", target_field="response"
    )
    assert load_split(config, "dev") == [Example("hi | hello there | how are you?", "fine")]
    config.turn_separator = " </s> "
    assert load_split(config, "dev") == [Example("hi </s> hello there </s> how are you?", "fine")]


def test_dialogue_list_with_translation_task_is_an_error(tmp_path):
    config = DataConfig(dir=str(_dialogue_dir(tmp_path)), task="translation", source_field="context", target_field="response")
    with pytest.raises(DataError) as info:
        load_split(config, "dev")
    assert str(info.value) == f"{tmp_path / 'dev.jsonl'}:1: field 'context' must be a string, got list"


def test_dialogue_list_with_non_string_turn(tmp_path):
    path = _write_lines(tmp_path, [json.dumps({"src": ["a", 2], "trg": "b"})])
    message = _error(path, "src", "trg", turn_separator=" | ")
    assert message == f"{path}:1: field 'src' must be a string or a list of strings (dialogue turns), got list"


# --- bad input ------------------------------------------------------------------------


def test_not_json(tmp_path):
    path = _write_lines(tmp_path, [GOOD, GOOD, "{src: a}"])
    message = _error(path, "src", "trg")
    assert message.startswith(f"{path}:3: not valid JSON (")
    assert "at column 2)" in message


@pytest.mark.parametrize("line, what", [
    ('{"src": "a", "trg": "b"', "Expecting ',' delimiter at the end of the line: the line is cut short"),
    ('{"src": "a", "trg": "b', "Invalid control character at the end of the line: the line is cut short"),
    ('{"src": "a", "trg": ', "Expecting value at the end of the line: the line is cut short"),
    ('{"src": "a", "trg": "b"} x', "Extra data at column 26"),
])
def test_a_json_line_cut_at_its_end_is_called_cut_not_column_1_of_a_next_line(tmp_path, line, what):
    path = _write_lines(tmp_path, [GOOD, line, GOOD])
    assert _error(path, "src", "trg") == f"{path}:2: not valid JSON ({what})"


@pytest.mark.parametrize("line, kind", [('["a", "b"]', "list"), ('"a string"', "str"), ("42", "int"), ("null", "NoneType")])
def test_line_not_an_object(tmp_path, line, kind):
    path = _write_lines(tmp_path, [GOOD, line])
    assert _error(path, "src", "trg") == f"{path}:2: expected a JSON object, got {kind}"


def test_missing_field(tmp_path):
    path = _write_lines(tmp_path, [GOOD, GOOD, json.dumps({"source": "a", "trg": "b"})])
    assert _error(path, "src", "trg") == f"{path}:3: missing field 'src' (fields present: source, trg)"


def test_missing_field_in_empty_object(tmp_path):
    path = _write_lines(tmp_path, ["{}"])
    assert _error(path, "src", "trg") == f"{path}:1: missing field 'src' (fields present: none)"


def test_missing_target_field(tmp_path):
    path = _write_lines(tmp_path, [json.dumps({"src": "a"})])
    assert _error(path, "src", "trg") == f"{path}:1: missing field 'trg' (fields present: src)"


def test_non_string_field(tmp_path):
    path = _write_lines(tmp_path, [GOOD, json.dumps({"src": "a", "trg": 5})])
    assert _error(path, "src", "trg") == f"{path}:2: field 'trg' must be a string, got int"


@pytest.mark.parametrize("source", ["", "   \t "])
def test_empty_source(tmp_path, source):
    path = _write_lines(tmp_path, [GOOD, GOOD, json.dumps({"src": source, "trg": "b"})])
    assert _error(path, "src", "trg") == f"{path}:3: empty source in field 'src'"


def test_invalid_utf8(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(GOOD.encode() + b'\n{"src": "caf\xe9", "trg": "b"}\n')
    assert _error(path, "src", "trg") == f"{path}:2: invalid UTF-8 (byte 0xe9 at column 13)"


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    assert _error(path, "src", "trg") == f"{path}: no examples (the file is empty)"


@pytest.mark.parametrize("blank", ["", "   "])
def test_empty_line_in_the_middle(tmp_path, blank):
    path = _write_lines(tmp_path, [GOOD, blank, GOOD])
    assert _error(path, "src", "trg") == f"{path}:2: empty line (every line must hold one JSON object)"


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    assert _error(path, "src", "trg") == f"{path}: dataset file not found"


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


# --- BPE ------------------------------------------------------------------------------


def test_remove_bpe():
    assert remove_bpe("Kommis@@ sion der Europ@@ äischen") == "Kommission der Europäischen"


def test_remove_bpe_trailing_marker():
    assert remove_bpe("der Europ@@") == "der Europ"


def test_remove_bpe_without_markers_unchanged():
    text = "a plain sentence, with e-mail user@example.org"
    assert remove_bpe(text) == text
    assert remove_bpe("") == ""


# --- TSV conversion -------------------------------------------------------------------


def test_convert_parallel_tsv(tmp_path):
    tsv = tmp_path / "train.tsv"
    tsv.write_text(
        "Kommis@@ sion der Europ@@ äischen\tEuropean Commis@@ sion\n"
        "plain source\tplain target\n"
        "last@@ \tend@@\n",
        encoding="utf-8",
    )
    out = tmp_path / "out" / "train.jsonl"
    assert convert_parallel_tsv(tsv, out) == 3
    assert read_examples(out, "src", "trg") == [
        Example("Kommission der Europäischen", "European Commission"),
        Example("plain source", "plain target"),
        Example("last", "end"),
    ]
    assert out.read_text(encoding="utf-8").splitlines()[0] == json.dumps(
        {"src": "Kommission der Europäischen", "trg": "European Commission"}, ensure_ascii=False
    )
    assert sorted(p.name for p in out.parent.iterdir()) == ["train.jsonl"]


def test_convert_parallel_tsv_custom_fields(tmp_path):
    tsv = tmp_path / "in.tsv"
    tsv.write_text("a\tb\n", encoding="utf-8")
    out = tmp_path / "in.jsonl"
    assert convert_parallel_tsv(tsv, out, "de", "en") == 1
    assert read_examples(out, "de", "en") == [Example("a", "b")]


@pytest.mark.parametrize("bad", ["no tab here", "a\tb\tc"])
def test_convert_parallel_tsv_bad_line(tmp_path, bad):
    tsv = tmp_path / "in.tsv"
    tsv.write_text(f"a\tb\n{bad}\nc\td\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    with pytest.raises(DataError) as info:
        convert_parallel_tsv(tsv, out)
    n = len(bad.split("\t"))
    assert str(info.value) == f"{tsv}:2: expected source<TAB>target, found {n} fields"
    # written atomically: nothing at the output path, no temporary file left beside it
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tsv"]


def test_convert_parallel_tsv_failure_keeps_old_output(tmp_path):
    tsv = tmp_path / "in.tsv"
    tsv.write_text("a\tb\nbroken\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    out.write_text("old\n", encoding="utf-8")
    with pytest.raises(DataError):
        convert_parallel_tsv(tsv, out)
    assert out.read_text(encoding="utf-8") == "old\n"


def test_text_artifacts_keep_one_line_per_example(tmp_path):
    """A decoded text may hold any line boundary Python knows; the hypotheses file must
    still have exactly one line per example, read back as written."""
    from selfmem.common.io import atomic_write_text, one_line, read_lines

    texts = ["a\nb", "c\rd", "e\u2028f\x85g", "", "h\r\ni"]
    assert [one_line(t) for t in texts] == ["a b", "c d", "e f g", "", "h i"]
    path = tmp_path / "hyps.txt"
    atomic_write_text(path, "".join(one_line(t) + "\n" for t in texts))
    assert read_lines(path) == ["a b", "c d", "e f g", "", "h i"]
    path.write_text("x\u2028y\n\n", encoding="utf-8")  # written elsewhere: split on \n only
    assert read_lines(path) == ["x\u2028y", ""]
    path.write_text("", encoding="utf-8")
    assert read_lines(path) == []
