"""bench/selector_quality.py reuses round 1's candidates only where they were made as asked."""

import importlib.util
import json

import pytest
from conftest import DEMO_CONFIG, REPO

from selfmem.common.config import load_config
from selfmem.common.distributed import DistEnv
from selfmem.common.run import RunPaths

ONE_PROCESS = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1)


def bench_module():
    spec = importlib.util.spec_from_file_location("selector_quality", REPO / "bench" / "selector_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_candidates_made_under_other_settings_are_refused_not_reused(tmp_path):
    bench = bench_module()
    config = load_config(DEMO_CONFIG, [f"run.root={tmp_path}", "candidates.num_beams=16", "candidates.num_return=16"])
    paths = RunPaths(config.run_dir)
    path = paths.candidates(1, "dev")
    path.parent.mkdir(parents=True)
    # a lift's round 1, from before the settings were recorded: 50 candidates an example
    path.write_text(json.dumps({"memories": [["m"]], "candidates": [[f"c{i}" for i in range(50)]]}) + "\n")
    with pytest.raises(SystemExit, match=r"dev.jsonl holds 50 candidates an example, not candidates.num_return = "
                                         r"16: delete it, or point run.root at a copy of the run"):
        bench.ensure_decoded(config, ONE_PROCESS, paths, "dev", "candidates", "g")
    record = path.with_name("dev.made_with.json")
    record.write_text(json.dumps(bench.made_with(config, "g", "candidates")))
    bench.ensure_decoded(config, ONE_PROCESS, paths, "dev", "candidates", "g")  # as recorded: reused
    with pytest.raises(SystemExit, match=r"made under other settings \(generator 'g' -> 'h'\)"):  # retrained
        bench.ensure_decoded(config, ONE_PROCESS, paths, "dev", "candidates", "h")
    other = load_config(DEMO_CONFIG, [f"run.root={tmp_path}", "candidates.num_beams=16", "candidates.num_return=16",
                                      "candidates.length_penalty=0.8", "candidates.max_tokens=99"])
    with pytest.raises(SystemExit, match=r"made under other settings \(candidates.length_penalty 1.0 -> 0.8\)"):
        bench.ensure_decoded(other, ONE_PROCESS, paths, "dev", "candidates", "g")
    # samples depend on the sampling keys, not on the beam's
    samples = paths.samples(1, "dev")
    samples.parent.mkdir(parents=True)
    samples.write_text(path.read_text())
    samples.with_name("dev.made_with.json").write_text(json.dumps(bench.made_with(config, "g", "samples")))
    wider = load_config(DEMO_CONFIG, [f"run.root={tmp_path}", "candidates.num_beams=50"])
    bench.ensure_decoded(wider, ONE_PROCESS, paths, "dev", "samples", "g")
    with pytest.raises(SystemExit, match=r"candidates.epsilon 0.02 -> 0.1"):
        bench.ensure_decoded(load_config(DEMO_CONFIG, [f"run.root={tmp_path}", "candidates.epsilon=0.1"]),
                             ONE_PROCESS, paths, "dev", "samples", "g")
