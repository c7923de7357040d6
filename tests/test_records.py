"""Memory and candidates files a user hands to a stage: every bad line refused with its
FILE:LINE and what is wrong, before any model is loaded."""

import dataclasses
import json

import pytest

from conftest import DEMO_CONFIG

from selfmem.common.config import load_config
from selfmem.common.data import load_split
from selfmem.common.distributed import DistEnv
from selfmem.common.records import DataError, iter_records
from selfmem.common.run import RunPaths
from selfmem.infer.generate import generate
from selfmem.lift.pipeline import check_lift_config
from selfmem.select.candidates import selector_examples
from selfmem.select.stage import check_selector_config, select_memories

ONE_PROCESS = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1)
EXAMPLES = 3  # demo examples a split


def write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return path


def memory_line(memories=("a memory",)):
    return json.dumps({"memories": list(memories)})


def candidates_line(candidates=(("one", "two"),), memories=(("a memory",),)):
    return json.dumps({"memories": [list(m) for m in memories], "candidates": [list(c) for c in candidates]})


def config(tmp_path, *overrides):
    return load_config(DEMO_CONFIG, [f"run.root={tmp_path}", f"data.max_examples={EXAMPLES}", *overrides])


def generate_error(tmp_path, lines) -> str:
    """The error of decoding dev with a memory file of ``lines`` (no tokenizer nor generator exists:
    the file is refused before either is read)."""
    memory = write(tmp_path / "memory.jsonl", lines)
    c = config(tmp_path)
    with pytest.raises(DataError) as info:
        generate(c, ONE_PROCESS, RunPaths(c.run_dir), "dev", "candidates", memory, 1)
    return str(info.value)


def select_error(tmp_path, lines, *overrides) -> str:
    """The error of choosing dev's memories from a candidates file of ``lines`` (no selector
    exists; the BM25 memory, MBR's anchor, does)."""
    candidates = write(tmp_path / "candidates.jsonl", lines)
    c = config(tmp_path, *overrides)
    write(RunPaths(c.run_dir).bm25_memory("dev"), [json.dumps({"memories": ["a hit"]})] * EXAMPLES)
    with pytest.raises(DataError) as info:
        select_memories(c, ONE_PROCESS, RunPaths(c.run_dir), "dev", 1, candidates)
    return str(info.value)


def test_reader_names_the_file_and_line_of_each_bad_line(tmp_path):
    path = tmp_path / "x.jsonl"
    cases = [(b'{"a": 1}\n{"a": 2,}\n', '2: not valid JSON (Expecting property name enclosed in double quotes at '
                                         'column 9)'),
             (b'{"a": 1}\n{"a": "\xff"}\n', "2: invalid UTF-8 (byte 0xff at column 8)"),
             (b'{"a": 1}\n\n{"a": 2}\n', "2: empty line (every line must hold one JSON object)"),
             (b'[1, 2]\n', "1: expected a JSON object, got list")]
    for content, message in cases:
        path.write_bytes(content)
        with pytest.raises(DataError) as info:
            list(iter_records(path))
        assert str(info.value) == f"{path}:{message}"
    assert [where for where, _ in iter_records(write(path, ['{"a": 1}', '{"b": 2}']))] == [f"{path}:1", f"{path}:2"]
    with pytest.raises(DataError, match="nothere.jsonl: file not found"):
        list(iter_records(tmp_path / "nothere.jsonl"))


def test_a_memory_file_with_a_bad_json_line_is_refused(tmp_path):
    error = generate_error(tmp_path, [memory_line(), memory_line(), '{"memories": ["a", "b",]}'])
    assert error == f"{tmp_path / 'memory.jsonl'}:3: not valid JSON (Expecting value at column 24)"


def test_a_memory_line_without_memories_is_refused(tmp_path):
    error = generate_error(tmp_path, [memory_line(), json.dumps({"memory": ["x"], "ids": [1]}), memory_line()])
    assert error == f"{tmp_path / 'memory.jsonl'}:2: missing field 'memories' (fields present: memory, ids)"


def test_memories_given_as_a_string_are_refused_not_cut_to_a_character(tmp_path):
    error = generate_error(tmp_path, [memory_line(), json.dumps({"memories": "a whole memory"}), memory_line()])
    assert error == (f"{tmp_path / 'memory.jsonl'}:2: \"memories\" must be a list of strings (ranked retrieved "
                     f"memories) or a list of memory inputs, each a list of strings; got a string")
    mixed = generate_error(tmp_path, [memory_line(), memory_line(), json.dumps({"memories": [["a"], "b"]})])
    assert mixed.endswith(":3: \"memories\" must be a list of strings (ranked retrieved memories) or a list of "
                          "memory inputs, each a list of strings; got a list of list and str")


def test_a_memory_file_of_another_length_is_refused_with_both_counts(tmp_path):
    assert generate_error(tmp_path, [memory_line()] * 2) == f"{tmp_path / 'memory.jsonl'}: 2 lines for 3 dev " \
                                                           f"examples (one line per example, in dataset order)"
    assert generate_error(tmp_path, []) == f"{tmp_path / 'memory.jsonl'}: 0 lines for 3 dev examples (one line " \
                                           f"per example, in dataset order)"


def test_a_truncated_candidates_file_is_refused_at_its_cut_line(tmp_path):
    error = select_error(tmp_path, [candidates_line(), candidates_line(), candidates_line()[:25]])
    assert error == f"{tmp_path / 'candidates.jsonl'}:3: not valid JSON (Expecting ',' delimiter at the end of " \
                    f"the line: the line is cut short)"
    short = select_error(tmp_path, [candidates_line()])
    assert short == f"{tmp_path / 'candidates.jsonl'}: 1 lines for 3 dev examples (one line per example, in " \
                    f"dataset order)"


def test_mbr_without_the_retrieved_memory_it_weighs_is_refused(tmp_path):
    c = config(tmp_path)
    write(tmp_path / "candidates.jsonl", [candidates_line()] * EXAMPLES)
    bm25 = RunPaths(c.run_dir).bm25_memory("dev")
    with pytest.raises(DataError) as info:
        select_memories(c, ONE_PROCESS, RunPaths(c.run_dir), "dev", 1, tmp_path / "candidates.jsonl")
    assert str(info.value) == (f"{bm25}: file not found; MBR weighs the retrieved memory beside the candidates "
                               f"(selector.mbr_retrieved_weight null: chosen on dev among 0, 1, 2, 4, 8, 16) and "
                               f"reads it there: run launch/retrieve.py first, or set selector.mbr_retrieved_weight=0")
    fixed = dataclasses.replace(c, selector=dataclasses.replace(c.selector, mbr_retrieved_weight=8.0))
    with pytest.raises(DataError, match=r"\(selector.mbr_retrieved_weight 8\) and reads it there"):
        select_memories(fixed, ONE_PROCESS, RunPaths(c.run_dir), "dev", 1, tmp_path / "candidates.jsonl")
    write(bm25, [json.dumps({"memories": ["a hit"]})] * (EXAMPLES - 1))
    with pytest.raises(DataError, match=rf"^{bm25}: 2 lines for 3 dev examples \(one line per example"):
        select_memories(c, ONE_PROCESS, RunPaths(c.run_dir), "dev", 1, tmp_path / "candidates.jsonl")
    # test's weight is dev's choice: without the round's dev candidates there is none
    dev_candidates = RunPaths(c.run_dir).candidates(4, "dev")
    with pytest.raises(DataError) as info:
        select_memories(c, ONE_PROCESS, RunPaths(c.run_dir), "test", 4, tmp_path / "candidates.jsonl")
    assert str(info.value) == (f"{dev_candidates}: file not found; selector.mbr_retrieved_weight null chooses the "
                               f"retrieved memory's weight on round 4's dev candidates: decode them first "
                               f"(launch/generate.py --split dev --mode candidates --round 4), or set "
                               f"selector.mbr_retrieved_weight")
    both = dataclasses.replace(c, selector=dataclasses.replace(c.selector, no_memory_weight=None))
    with pytest.raises(DataError) as info:
        select_memories(both, ONE_PROCESS, RunPaths(c.run_dir), "test", 4, tmp_path / "candidates.jsonl")
    assert str(info.value) == (f"{dev_candidates}: file not found; selector.mbr_retrieved_weight and "
                               f"selector.no_memory_weight null choose the retrieved memory's weight and the no-memory "
                               f"weight on round 4's dev candidates: decode them first (launch/generate.py --split dev "
                               f"--mode candidates --round 4), or set selector.mbr_retrieved_weight and "
                               f"selector.no_memory_weight")


def test_an_example_without_candidates_is_refused(tmp_path):
    lines = [candidates_line(), candidates_line(candidates=([],)), candidates_line()]
    message = (f"{tmp_path / 'candidates.jsonl'}:2: no candidates (\"candidates\" holds no text; decoding gives "
               f"at least one per memory input): decode the split again with launch/generate.py --mode candidates")
    assert select_error(tmp_path, lines) == message
    # the selector's training reads candidates through the same check (max() of nothing before)
    c = config(tmp_path)
    with pytest.raises(DataError) as info:
        selector_examples(tmp_path / "candidates.jsonl", load_split(c.data, "dev"), lambda hyp, ref: 0.0, "dev")
    assert str(info.value) == message


def test_samples_must_come_from_the_candidates_memories(tmp_path):
    samples = RunPaths(config(tmp_path).run_dir).samples(1, "dev")
    samples.parent.mkdir(parents=True)

    def samples_line(memories=(("a memory",),)):
        return json.dumps({"memories": [list(m) for m in memories], "samples": [["one", "three"]]})

    lines = [candidates_line()] * 3
    write(samples, [samples_line(), samples_line(memories=(("another",),)), samples_line()])
    assert select_error(tmp_path, lines, "selector.mbr_references=samples") == (
        f"{samples}:2: its \"memories\" differ from those of {tmp_path / 'candidates.jsonl'}:2: samples and "
        f"candidates must be decoded from the same memory file")
    write(samples, [samples_line()] * 4)
    assert select_error(tmp_path, lines, "selector.mbr_references=samples") == (
        f"{samples}: 4 lines for 3 dev examples (one line per example, in dataset order)")


def test_empty_samples_are_refused_not_scored_nan(tmp_path):
    samples = write(RunPaths(config(tmp_path).run_dir).samples(1, "dev"),
                    [json.dumps({"memories": [["a memory"]], "samples": [["one"]]}),
                     json.dumps({"memories": [["a memory"]], "samples": [[]]}),
                     json.dumps({"memories": [["a memory"]], "samples": [["one"]]})])
    assert select_error(tmp_path, [candidates_line()] * 3, "selector.mbr_references=samples") == (
        f"{samples}:2: no samples (\"samples\" holds no text; sampling draws at least one per memory input): "
        f"decode the split again with launch/generate.py --mode samples")


def test_a_selector_reading_the_generators_scores_refuses_candidates_without_them_before_any_model(tmp_path):
    # no selector is trained: the candidates are refused first, with what needs their scores
    lines = [json.dumps({"memories": [["a memory"]], "candidates": [["one", "two"]], "scores": [[-0.5, -0.7]]}),
             candidates_line(), candidates_line()]
    for overrides, wanted_by in ((["selector.kind=trained", "selector.features=[generator]"],
                                  "the selector feature 'generator'"),
                                 (["selector.kind=trained", "selector.features=[mbr]", "selector.mbr_temperature=1",
                                   "selector.mbr_retrieved_weight=0"], "selector.mbr_temperature")):
        assert select_error(tmp_path, lines, *overrides) == (
            f"{tmp_path / 'candidates.jsonl'}:2: no \"scores\" (the generator's score of each candidate), which "
            f"{wanted_by} needs: decode the candidates with launch/generate.py --mode candidates")


def test_candidates_that_are_not_lists_of_texts_are_refused(tmp_path):
    lines = [candidates_line(), json.dumps({"memories": [[]], "candidates": ["one", "two"]}), candidates_line()]
    assert select_error(tmp_path, lines) == (f"{tmp_path / 'candidates.jsonl'}:2: \"candidates\" must be a list of "
                                             f"lists of strings, got a list of str")


def test_augment_mode_refuses_a_top_b_candidates_file(tmp_path):
    top_b = candidates_line(candidates=(("one",), ("two",)), memories=(("m1",), ("m2",)))
    error = select_error(tmp_path, [candidates_line(), top_b, candidates_line()], "selector.mode=augment")
    assert error == (f"{tmp_path / 'candidates.jsonl'}:2: selector.mode augment grows one memory list per example, "
                     f"but \"memories\" holds 2 memory inputs (a top-B file of selector.mode replace?): decode "
                     f"from a memory file of one list per example")


def test_augment_with_a_beam_is_refused_up_front(tmp_path):
    c = config(tmp_path, "selector.mode=augment", "selector.beam=4", "generator.num_memories=4")
    message = ("selector.mode augment appends the selector's one top pick to each example's memory list, so "
               "selector.beam (B = 4, the memories kept per example) must be 1; keep B memories with "
               "selector.mode replace")
    with pytest.raises(ValueError) as info:
        check_selector_config(c.selector)
    assert str(info.value) == message
    with pytest.raises(ValueError) as info:
        check_lift_config(c)
    assert str(info.value) == message
    with pytest.raises(ValueError) as info:  # before the candidates file is even read
        select_memories(c, ONE_PROCESS, RunPaths(c.run_dir), "dev", 1, tmp_path / "none.jsonl")
    assert str(info.value) == message


def test_augment_without_room_for_a_self_memory_is_refused_up_front(tmp_path):
    c = config(tmp_path, "selector.mode=augment", "selector.max_memories=1")
    message = ("selector.mode augment adds each round's pick to a list of at most selector.max_memories (1) "
               "memories, which must hold a self memory beside the retrieved one (selector.keep_retrieved): set it "
               "to 2 or more")
    for check in (lambda: check_selector_config(c.selector), lambda: check_lift_config(c)):
        with pytest.raises(ValueError) as info:
            check()
        assert str(info.value) == message
    # without the retrieved memory one is room enough (and fewer is refused when the config is loaded)
    check_selector_config(config(tmp_path, "selector.mode=augment", "selector.max_memories=1",
                                 "selector.keep_retrieved=false").selector)
