from pathlib import Path

import pytest
import yaml

from selfmem.common.config import (
    LIMITS,
    Config,
    ConfigError,
    DataConfig,
    RetrievalConfig,
    TrainConfig,
    load_config,
    parse_args,
    parse_override,
    save_config,
)

REPO = Path(__file__).parent.parent
CONFIG_FILES = sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "configs").glob("*.yml"))


def _write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults -------------------------------------------------------------------------


def test_load_config_none_gives_defaults():
    assert load_config(None) == Config()
    assert load_config() == Config()


def test_typed_defaults():
    config = Config()
    assert config.retrieval.k1 == 1.2
    assert config.retrieval.b == 0.75
    assert config.retrieval.topk == 5
    assert config.retrieval.backend == "bm25s"
    assert config.retrieval.index_name is None
    assert config.tokenizer.kind == "sentencepiece"
    assert config.data.max_examples is None
    assert config.train.lr == 7e-4
    assert config.selector.rouge_weights == [0.5, 0.5]
    assert config.run_dir == Path("runs") / "demo"


def test_default_lists_are_not_shared():
    a, b = Config(), Config()
    a.selector.rouge_weights.append(1.0)
    assert b.selector.rouge_weights == [0.5, 0.5]


# --- YAML files -----------------------------------------------------------------------


def test_yaml_sets_nested_values(tmp_path):
    path = _write(
        tmp_path,
        "run:\n  name: exp1\n  seed: 7\n"
        "data:\n  dir: data/x\n  task: summarization\n  metric: rouge\n"
        "retrieval:\n  topk: 3\n  exclude_self: false\n"
        "selector:\n  rouge_weights: [1, 0.25]\n",
    )
    config = load_config(path)
    assert config.run.name == "exp1"
    assert config.run.seed == 7
    assert config.data == DataConfig(dir="data/x", task="summarization", metric="rouge")
    assert config.retrieval == RetrievalConfig(topk=3, exclude_self=False)
    assert config.selector.rouge_weights == [1.0, 0.25]
    assert all(type(w) is float for w in config.selector.rouge_weights)
    # untouched sections keep their defaults
    assert config.train == TrainConfig()


def test_int_widens_to_float(tmp_path):
    config = load_config(_write(tmp_path, "train:\n  lr: 1\n"))
    assert config.train.lr == 1.0
    assert type(config.train.lr) is float


def test_exponent_without_dot_is_a_float(tmp_path):
    path = _write(tmp_path, "train:\n  lr: 5e-4\n")
    assert yaml.safe_load(path.read_text())["train"]["lr"] == "5e-4"  # PyYAML's reading
    config = load_config(path)
    assert config.train.lr == 0.0005
    assert type(config.train.lr) is float


def test_optional_fields_accept_null(tmp_path):
    path = _write(tmp_path, "data:\n  max_examples: null\ntrain:\n  max_steps: ~\ntokenizer:\n  path: null\n")
    config = load_config(path)
    assert config.data.max_examples is None
    assert config.train.max_steps is None
    assert config.tokenizer.path is None
    config = load_config(_write(tmp_path, "data:\n  max_examples: 20\n", "b.yaml"))
    assert config.data.max_examples == 20


def test_empty_yaml_file_gives_defaults(tmp_path):
    assert load_config(_write(tmp_path, "# nothing here\n")) == Config()


# --- overrides ------------------------------------------------------------------------


def test_overrides_applied_after_file(tmp_path):
    path = _write(tmp_path, "train:\n  lr: 0.1\nretrieval:\n  topk: 9\ndata:\n  max_examples: 50\nrun:\n  name: fromfile\n")
    config = load_config(path, ["train.lr=5e-4", "retrieval.topk=4", "data.max_examples=null", "run.name=x"])
    assert config.train.lr == 0.0005
    assert config.retrieval.topk == 4
    assert config.data.max_examples is None
    assert config.run.name == "x"
    assert config.run_dir == Path("runs") / "x"


def test_later_override_wins():
    config = load_config(None, ["retrieval.topk=4", "retrieval.topk=8"])
    assert config.retrieval.topk == 8


def test_parse_override_builds_nested_dict():
    assert parse_override("train.lr=5e-4") == {"train": {"lr": "5e-4"}}
    assert parse_override("data.max_examples=null") == {"data": {"max_examples": None}}
    assert parse_override("run.name=a=b") == {"run": {"name": "a=b"}}
    assert parse_override("run.name=") == {"run": {"name": ""}}


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.lr"])
    assert str(info.value) == "override 'train.lr': expected KEY=VALUE, e.g. train.lr=5e-4"


# --- errors ---------------------------------------------------------------------------


def test_unknown_key_in_section(tmp_path):
    path = _write(tmp_path, "train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: unknown key 'train.lrr'; valid keys here: ")
    valid = message.split("valid keys here: ")[1].split(", ")
    assert "lr" in valid
    assert "warmup_steps" in valid


def test_unknown_top_level_section(tmp_path):
    path = _write(tmp_path, "trian:\n  lr: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: unknown key 'trian'; valid keys here: ")
    assert message.endswith("run, data, tokenizer, retrieval, generator, train, candidates, selector, lift, dist")


def test_string_for_int_field(tmp_path):
    path = _write(tmp_path, "retrieval:\n  topk: five\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: 'retrieval.topk': expected int, got 'five'"


def test_float_for_int_field(tmp_path):
    path = _write(tmp_path, "retrieval:\n  topk: 4.5\n")
    with pytest.raises(ConfigError, match=r"'retrieval\.topk': expected int, got 4\.5"):
        load_config(path)


def test_bool_for_int_field_rejected(tmp_path):
    path = _write(tmp_path, "retrieval:\n  topk: true\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: 'retrieval.topk': expected int, got True"


def test_bool_for_float_field_rejected(tmp_path):
    path = _write(tmp_path, "train:\n  lr: false\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: 'train.lr': expected float, got False"


def test_non_numeric_string_for_float_field(tmp_path):
    path = _write(tmp_path, "train:\n  lr: fast\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: 'train.lr': expected float, got 'fast'"


def test_int_for_bool_field_rejected(tmp_path):
    path = _write(tmp_path, "retrieval:\n  exclude_self: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: 'retrieval.exclude_self': expected bool, got 1"


def test_value_outside_literal_choices(tmp_path):
    path = _write(tmp_path, "retrieval:\n  backend: solr\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: 'retrieval.backend': expected 'bm25s' | 'elasticsearch', got 'solr'"


def test_optional_int_rejects_string(tmp_path):
    path = _write(tmp_path, "data:\n  max_examples: many\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: 'data.max_examples': expected int or null, got 'many'"


def test_list_field_rejects_bad_item(tmp_path):
    path = _write(tmp_path, "selector:\n  rouge_weights: [0.5, high]\n")
    with pytest.raises(ConfigError, match=r"'selector\.rouge_weights': expected float, got 'high'"):
        load_config(path)


def test_section_given_a_scalar(tmp_path):
    path = _write(tmp_path, "train: 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: 'train' is a section and needs a mapping, got 5"


def test_unknown_key_in_override_names_the_override():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.lrr=0.1"])
    message = str(info.value)
    assert message.startswith("override 'train.lrr=0.1': unknown key 'train.lrr'; valid keys here: ")
    assert "lr" in message.split("valid keys here: ")[1].split(", ")


def test_invalid_yaml_is_one_line_naming_the_override_or_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["selector.features=[a"])
    assert str(info.value) == ("override 'selector.features=[a': the value is not valid YAML (expected ',' or ']', "
                               "but got '<stream end>' at line 1, column 3)")
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: [1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: not valid YAML (expected ',' or ']', but got '<stream end>' at line 3, column 1)"
    path.write_bytes(b"train:\n  lr: \xff\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: not UTF-8 text (invalid start byte at byte 13)"


def test_wrong_type_in_override_names_the_override():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["retrieval.backend=solr"])
    assert str(info.value) == "override 'retrieval.backend=solr': 'retrieval.backend': expected 'bm25s' | 'elasticsearch', got 'solr'"


def test_missing_config_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"config file not found: {path}"


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_not_a_mapping(tmp_path, text):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: expected a mapping of sections at the top level"


@pytest.mark.parametrize("override, message", [
    ("data.max_examples=0", "data.max_examples must be at least 1, or null (every example), got 0"),
    ("retrieval.b=1.5", "retrieval.b must be in [0, 1], got 1.5"),
    ("generator.dropout=1.0", "generator.dropout must be in [0, 1), got 1.0"),
    ("generator.num_memories=0", "generator.num_memories must be at least 1, got 0"),
    ("train.clip_norm=-1", "train.clip_norm must be more than 0, got -1.0"),  # clipping would turn the gradient
    ("train.max_steps=0", "train.max_steps must be at least 1, or null (no limit), got 0"),
    ("train.log_every=0", "train.log_every must be at least 1, got 0"),
    ("train.prefetch=-1", "train.prefetch must be 0 or more, got -1"),
    ("candidates.epsilon=1", "candidates.epsilon must be in [0, 1), got 1.0"),
    ("selector.temperature=0", "selector.temperature must be more than 0, got 0.0"),
    ("selector.group_size=1", "selector.group_size must be at least 2, got 1"),
    ("selector.rouge_weights=[1.0]",
     "selector.rouge_weights must be two weights of 0 or more (ROUGE-1's and ROUGE-2's), got [1.0]"),
    ("selector.rouge_weights=[0.5,-0.5]",
     "selector.rouge_weights must be two weights of 0 or more (ROUGE-1's and ROUGE-2's), got [0.5, -0.5]"),
    ("lift.patience=0", "lift.patience must be at least 1, got 0"),
    ("candidates.num_beams=10",
     "candidates.num_return (50) must be at most candidates.num_beams (10): a beam search returns at most its beams"),
    ("candidates.max_len=2 candidates.min_len=2",
     "candidates.min_len (2) must be below candidates.max_len (2) and generator.max_target_len (256), which cut "
     "decoding"),
    ("generator.max_target_len=3 candidates.min_len=3",
     "candidates.min_len (3) must be below candidates.max_len (256) and generator.max_target_len (3), which cut "
     "decoding"),
    ("retrieval.backend=elasticsearch retrieval.topk=10001",
     "retrieval.topk (10001) must be at most 10000 with the elasticsearch backend (its index.max_result_window)"),
])
def test_a_value_out_of_range_is_refused_when_loaded_naming_the_key(override, message, tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(None, override.split())
    assert str(info.value) == message
    key, value = override.split()[-1].split("=")  # the same from a file
    section, name = key.split(".")
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, yaml.safe_dump({section: {name: yaml.safe_load(value)}})),
                    override.split()[:-1])
    assert str(info.value) == message


def test_every_limit_holds_at_the_defaults_and_refuses_just_past_its_bound():
    defaults = Config()
    for key, (valid, what) in LIMITS.items():
        section, name = key.split(".")
        assert valid(getattr(getattr(defaults, section), name)), key
        if what.startswith("at least "):
            low = int(what.split()[2].rstrip(","))
            assert valid(low) and not valid(low - 1), key
        elif what in ("0 or more", "more than 0"):
            assert valid(1e-9) and not valid(-1e-9) and valid(0) == (what == "0 or more"), key
        elif what in ("in [0, 1]", "in [0, 1)", "in (0, 1]"):
            assert valid(0.5) and not valid(-1e-9) and not valid(1 + 1e-9), key
            assert valid(0) == what.startswith("in [") and valid(1) == what.endswith("]"), key
        elif key == "selector.rouge_weights":
            assert valid([0, 0.5]) and not valid([0.5, -1e-9]) and not valid([0.5]) and not valid([0.2, 0.3, 0.5])
        else:
            pytest.fail(f"{key}: no bound checked for its limit '{what}'")


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# --- saving ---------------------------------------------------------------------------


def test_save_config_round_trip(tmp_path):
    config = load_config(
        None,
        [
            f"run.root={tmp_path}",
            "run.name=rt",
            "train.lr=5e-4",
            "selector.lr=3e-5",
            "data.max_examples=12",
            "data.turn_separator=' || '",
            "retrieval.index_name=idx",
            "selector.rouge_weights=[0.2, 0.3]",
        ],
    )
    assert config.run_dir == tmp_path / "rt"
    path = save_config(config, config.run_dir)
    assert path == tmp_path / "rt" / "config.yaml"
    assert path.is_file()
    assert list((tmp_path / "rt").iterdir()) == [path]  # no temporary file left behind
    reloaded = load_config(path)
    assert reloaded == config
    assert reloaded.data.turn_separator == " || "
    assert reloaded.train.lr == 0.0005


def test_save_config_defaults_round_trip(tmp_path):
    path = save_config(Config(), tmp_path / "run")
    assert load_config(path) == Config()


def test_run_dir_is_root_slash_name():
    config = Config()
    config.run.root = "/somewhere/runs"
    config.run.name = "exp"
    assert config.run_dir == Path("/somewhere/runs/exp")


# --- command line ---------------------------------------------------------------------


def test_parse_args_applies_overrides(tmp_path):
    path = _write(tmp_path, "train:\n  lr: 0.1\nrun:\n  name: f\n")
    config, args = parse_args("test", argv=["--config", str(path), "train.lr=5e-4", "retrieval.topk=4"])
    assert config.train.lr == 0.0005
    assert config.retrieval.topk == 4
    assert config.run.name == "f"
    assert args.config == str(path)
    assert args.overrides == ["train.lr=5e-4", "retrieval.topk=4"]


def test_parse_args_without_overrides(tmp_path):
    path = _write(tmp_path, "retrieval:\n  topk: 2\n")
    config, _ = parse_args("test", argv=["--config", str(path)])
    assert config == load_config(path)
    assert config.retrieval.topk == 2


def test_parse_args_requires_config():
    with pytest.raises(SystemExit) as info:
        parse_args("test", argv=["train.lr=5e-4"])
    assert info.value.code == 2


# --- bundled configs ------------------------------------------------------------------


def test_configs_directory_has_yaml_files():
    assert CONFIG_FILES, "no YAML files in configs/"
    assert REPO / "configs" / "demo.yaml" in CONFIG_FILES


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_bundled_config_loads(path):
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    config = load_config(path)
    assert raw["data"]["dir"], f"{path}: data.dir not set"
    assert config.data.dir == raw["data"]["dir"]


def test_demo_config_points_at_demo_data():
    config = load_config(REPO / "configs" / "demo.yaml")
    assert config.data.dir == "data/demo"
    assert config.tokenizer.vocab_size == 4000
    assert (REPO / config.data.dir / "dev.jsonl").is_file()
