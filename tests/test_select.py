"""The selection stage for real: 1 rank against 2 (torchrun, gloo), top-B and augment, ties and duplicates."""

import json
import math
import shutil

import pytest
import torch
from conftest import DEMO_CONFIG, TINY, run_single, run_torchrun
from sacrebleu.metrics import BLEU, CHRF

from selfmem.common.config import SelectorConfig, load_config
from selfmem.common.data import load_split
from selfmem.common.distributed import DistEnv
from selfmem.common.records import DataError
from selfmem.common.run import RunPaths
from selfmem.common.tokenizer import load_tokenizer
from selfmem.models import ModelConfig
from selfmem.models.selector import GeneratorEncoderBackbone, Selector, pair_ids
from selfmem.retrieve.memory import bm25_hits, iter_retrieved
from selfmem.select.candidates import candidate_features, read_candidates
from selfmem.select.mbr import mbr_scores
from selfmem.select.pick import augment, top_b
from selfmem.select.stage import check_selector_config, describe_choices, select_memories
from selfmem.train.selector import train_selector

# several scoring batches; the trained selector, which the fixture makes (the MBR tests say so)
SMALL = [*TINY, "data.max_examples=20", "selector.max_tokens=200", "selector.kind=trained"]


@pytest.fixture(scope="module")
def run_root(tmp_path_factory):
    """A run with a tokenizer, a randomly initialised selector and hand-made dev candidates."""
    root = tmp_path_factory.mktemp("select")
    args = ["--config", str(DEMO_CONFIG), f"run.root={root}", *SMALL]
    run_single("launch/train_tokenizer.py", args)
    run = root / "demo"
    tokenizer = load_tokenizer(run / "tokenizer")
    torch.manual_seed(0)
    backbone = GeneratorEncoderBackbone(ModelConfig(vocab_size=tokenizer.vocab_size, d_model=16, encoder_layers=1,
                                                    decoder_layers=1, heads=2, ffn_dim=32, max_positions=300))
    Selector(backbone, dropout=0.1).save(run / "selector")
    dev = load_split(load_config(DEMO_CONFIG, [f"run.root={root}", *SMALL]).data, "dev")
    targets = [ex.target for ex in dev]
    lines = []
    for i in range(len(dev)):
        pool = [targets[(i + j) % len(dev)] for j in range(5)]
        pool.insert(3, pool[1])  # a duplicate, which scores exactly as its twin
        # the generator's scores: the duplicate's twin scores -0.1, the duplicate -0.3
        lines.append({"memories": [[targets[(i + 7) % len(dev)]]], "candidates": [pool],
                      "scores": [[-0.05 * ((i + j) % 5) - 0.1 * (j % 3) for j in range(6)]]})
    path = run / "round_0" / "candidates" / "dev.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    # the BM25 hits (MBR's anchors): a text of the pool first, one from elsewhere second; none for one example
    hits = [[] if i == 6 else [targets[(i + 2) % len(dev)], targets[(i + 11) % len(dev)]] for i in range(len(dev))]
    bm25 = run / "memory" / "bm25" / "dev.jsonl"
    bm25.parent.mkdir(parents=True)
    bm25.write_text("".join(json.dumps({"memories": h, "scores": [2.0, 1.0][:len(h)]}) + "\n" for h in hits),
                    encoding="utf-8")
    return root


def dev_hits(root):
    return [json.loads(line)["memories"] for line in (root / "demo" / "memory" / "bm25" / "dev.jsonl").read_text().splitlines()]


def select(root, *overrides, nproc=1):
    args = ["--config", str(DEMO_CONFIG), f"run.root={root}", *SMALL, *overrides, "--split", "dev"]
    run_single("launch/select_memory.py", args) if nproc == 1 else run_torchrun("launch/select_memory.py", args, nproc=nproc)
    return (root / "demo" / "round_0" / "memory" / "dev.jsonl").read_bytes()


def expected_scores(root):
    run = root / "demo"
    tokenizer = load_tokenizer(run / "tokenizer")
    selector = Selector.load(run / "selector")
    dev = load_split(load_config(DEMO_CONFIG, [f"run.root={root}", *SMALL]).data, "dev")
    records = [json.loads(line) for line in (run / "round_0" / "candidates" / "dev.jsonl").read_text().splitlines()]
    out = []
    with torch.no_grad():
        for ex, record in zip(dev, records):
            pool = record["candidates"][0]
            pairs = [pair_ids(tokenizer.encode(ex.source), tokenizer.encode(c), tokenizer.bos_id, tokenizer.sep_id, 256)
                     for c in pool]
            out.append((record, pool, [selector(torch.tensor([p]))[0].item() for p in pairs]))
    return out


@pytest.mark.parametrize("beam", [1, 4])
def test_top_b_memories_are_the_same_for_one_and_two_ranks(run_root, beam):
    one = select(run_root, f"selector.beam={beam}")
    two = select(run_root, f"selector.beam={beam}", nproc=2)
    assert two == one
    lines = [json.loads(line)["memories"] for line in one.decode("utf-8").splitlines()]
    for memories, (_, pool, scores) in zip(lines, expected_scores(run_root)):
        # scores of lone pairs equal the batched ones up to float rounding, so compare the choice
        assert memories == [[m] for m in top_b(pool, scores, beam)]
        assert len(memories) == beam and len({m[0] for m in memories}) == beam  # the duplicate counts once


def test_augment_appends_the_pick(run_root):
    one = select(run_root, "selector.mode=augment", "selector.max_memories=3")
    assert select(run_root, "selector.mode=augment", "selector.max_memories=3", nproc=2) == one
    lines = [json.loads(line)["memories"] for line in one.decode("utf-8").splitlines()]
    for memories, (record, pool, scores) in zip(lines, expected_scores(run_root)):
        assert memories == [augment(record["memories"][0], top_b(pool, scores, 1)[0], 3)]
        assert len(memories[0]) == 2


def test_augment_drops_the_oldest_self_memory_of_an_example_without_a_bm25_hit(run_root, tmp_path):
    # lists of two, full at max_memories 2: each pick pushes one out. Where BM25 found a hit the
    # list's head is the retrieved memory and stays; example 6 has none, so its list holds
    # self-memories only and its head, the oldest, goes
    root = tmp_path / "root"
    shutil.copytree(run_root, root)
    path = root / "demo" / "round_0" / "candidates" / "dev.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for i, record in enumerate(records):
        record["memories"] = [[f"head {i}", f"second {i}"]]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    lines = [json.loads(line)["memories"] for line in
             select(root, "selector.mode=augment", "selector.max_memories=2").decode("utf-8").splitlines()]
    hits = dev_hits(root)
    assert not hits[6] and all(hits[i] for i in range(len(hits)) if i != 6)
    for i, (memories, (_, pool, scores)) in enumerate(zip(lines, expected_scores(root))):
        pick = top_b(pool, scores, 1)[0]
        assert memories == [[f"second {i}", pick] if i == 6 else [f"head {i}", pick]]


def test_a_split_scored_in_chunks_gets_the_memories_of_one_read_whole(run_root):
    whole = select(run_root, "selector.beam=2")
    config = load_config(DEMO_CONFIG, [f"run.root={run_root}", *SMALL, "selector.beam=2"])
    one_process = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1)
    # 20 examples in chunks of 3: seven sets of batches, the last one short
    picks = select_memories(config, one_process, RunPaths(config.run_dir), "dev", 0, chunk_examples=3)
    output = run_root / "demo" / "round_0" / "memory" / "dev.jsonl"
    assert output.read_bytes() == whole
    assert picks == [json.loads(line)["memories"][0][0] for line in whole.decode("utf-8").splitlines()]
    assert sorted(p.name for p in output.parent.iterdir()) == ["dev.jsonl"]  # no shard left behind


@pytest.mark.parametrize("utility,temperature,retrieved", [("bleu", "null", None), ("bleu", "0.5", None),
                                                          ("bleu", "0.5", (1, 2)), ("chrf", "null", "default")])
def test_mbr_memories_are_the_consensus_picks_for_one_and_two_ranks(run_root, utility, temperature, retrieved):
    # the default: 5 hits weighing what dev chooses, with the temperature (the candidates here are dev's)
    hits, weight = {None: (5, 0), (1, 2): (1, 2), "default": (5, None)}[retrieved]
    overrides = ["selector.kind=mbr", "selector.beam=2", f"selector.mbr_utility={utility}",
                 *([] if retrieved == "default" else [f"selector.mbr_temperature={temperature}",
                                                      f"selector.mbr_retrieved_hits={hits}",
                                                      f"selector.mbr_retrieved_weight={weight}"])]
    one = select(run_root, *overrides)
    assert select(run_root, *overrides, nproc=2) == one
    records = [json.loads(line) for line in
               (run_root / "demo" / "round_0" / "candidates" / "dev.jsonl").read_text().splitlines()]
    metric = BLEU(tokenize="13a", effective_order=True) if utility == "bleu" else CHRF(word_order=2)

    def expected(record, example_hits, temperature, weight):
        """Expected utility against the distinct candidates, weighted by softmax(generator score /
        temperature) (null: alike), and the top BM25 hits (here at most two) sharing ``weight``,
        computed by sacrebleu itself."""
        pool, generator = record["candidates"][0], record["scores"][0]
        best = {}
        for text, score in zip(pool, generator):
            best[text] = max(score, best.get(text, -math.inf))
        weights = {t: 1.0 if temperature is None else math.exp(s / temperature) for t, s in best.items()}
        consensus = [sum(w * metric.sentence_score(c, [r]).score for r, w in weights.items()) / sum(weights.values())
                     for c in pool]
        anchors = example_hits[:hits] if weight else []
        return consensus, [(u + weight * sum(metric.sentence_score(c, [a]).score for a in anchors) / len(anchors))
                           / (1 + weight) if anchors else u for c, u in zip(pool, consensus)]

    temperature = None if temperature == "null" else float(temperature)
    if weight is None:  # the pair whose picks score the best corpus BLEU on dev, the first of ties
        references = [ex.target for ex in load_split(load_config(DEMO_CONFIG, [f"run.root={run_root}", *SMALL]).data,
                                                     "dev")]
        dev_bleu = {(t, w): BLEU().corpus_score([top_b(r["candidates"][0], expected(r, h, t, w)[1], 1)[0]
                                                 for r, h in zip(records, dev_hits(run_root))], [references]).score
                    for t in (None, 1.0, 0.3, 0.1, 0.05) for w in (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)}
        temperature, weight = max(dev_bleu, key=dev_bleu.get)
        assert len(set(dev_bleu.values())) > 1  # the choice matters here
    changed = anchored = 0
    for line, record, example_hits in zip(one.decode("utf-8").splitlines(), records, dev_hits(run_root)):
        pool = record["candidates"][0]
        consensus, scores = expected(record, example_hits, temperature, weight)
        assert json.loads(line)["memories"] == [[m] for m in top_b(pool, scores, 2)]
        changed += top_b(pool, scores, 1)[0] != pool[0]
        anchored += top_b(pool, scores, 2) != top_b(pool, consensus, 2)
    assert changed > 0  # some picks are not the first candidate
    assert (anchored > 0) == (weight > 0)  # and the retrieved memory moves some


def test_mbr_weighted_by_the_generator_refuses_a_candidates_file_without_scores(run_root, tmp_path):
    config = load_config(DEMO_CONFIG, [f"run.root={run_root}", *SMALL, "selector.kind=mbr",
                                       "selector.mbr_temperature=1.0", "selector.mbr_temperature_choices=[]"])
    source = run_root / "demo" / "round_0" / "candidates" / "dev.jsonl"
    lines = [json.loads(line) for line in source.read_text().splitlines()]
    del lines[4]["scores"]
    bare = tmp_path / "dev.jsonl"
    bare.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    one_process = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1)
    with pytest.raises(DataError, match=rf"{bare}:5: no \"scores\" \(the generator's score of each candidate\), "
                                        r"which selector.mbr_temperature needs"):
        select_memories(config, one_process, RunPaths(config.run_dir), "dev", 5, candidates_path=bare)
    lines[4]["scores"] = [[0.0]]
    bare.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    with pytest.raises(DataError, match=rf"{bare}:5: \"scores\" must be a list of lists of numbers shaped like"):
        select_memories(config, one_process, RunPaths(config.run_dir), "dev", 5, candidates_path=bare)


def test_a_selector_with_features_scores_each_candidate_with_its_values(run_root, tmp_path):
    root = tmp_path / "features"
    shutil.copytree(run_root, root)
    run = root / "demo"
    tokenizer = load_tokenizer(run / "tokenizer")
    torch.manual_seed(1)
    backbone = GeneratorEncoderBackbone(ModelConfig(vocab_size=tokenizer.vocab_size, d_model=16, encoder_layers=1,
                                                    decoder_layers=1, heads=2, ffn_dim=32, max_positions=300))
    selector = Selector(backbone, dropout=0.1, features=["generator", "mbr"])
    with torch.no_grad():  # features that weigh: the pick is not the backbone's alone
        selector.head.feature_weights.copy_(torch.tensor([3.0, 2.0]))
    selector.save(run / "selector")
    settings = ["selector.beam=2", "selector.features=[generator,mbr]", "selector.mbr_retrieved_weight=8"]  # as S was trained
    one = select(root, *settings)
    assert select(root, *settings, nproc=2) == one
    config = load_config(DEMO_CONFIG, [f"run.root={root}", *SMALL, *settings])
    lines = read_candidates(run / "round_0" / "candidates" / "dev.jsonl", 20, "dev",
                            retrieved=iter_retrieved(config, RunPaths(config.run_dir), "dev", 20))
    selector = Selector.load(run / "selector")
    dev = load_split(config.data, "dev")
    for memories, line, ex, hits in zip(one.decode("utf-8").splitlines(), lines, dev, dev_hits(root)):
        assert line.retrieved == hits  # at most two hits here (the default reads five)
        values = candidate_features(line, ["generator", "mbr"], config.selector, "13a")
        mbr = mbr_scores(line.pool, None, "chrf", None, anchors=hits, anchor_weight=8.0)
        assert values == [[g, m / 100] for g, m in zip(line.pool_scores, mbr)]
        pairs = [pair_ids(tokenizer.encode(ex.source), tokenizer.encode(c), tokenizer.bos_id, tokenizer.sep_id, 256)
                 for c in line.pool]
        with torch.no_grad():
            scores = [selector(torch.tensor([p]), torch.tensor([v]))[0].item() for p, v in zip(pairs, values)]
        assert json.loads(memories)["memories"] == [[m] for m in top_b(line.pool, scores, 2)]
    # a config that does not name S's features (which read its MBR settings) is refused
    plain = load_config(DEMO_CONFIG, [f"run.root={root}", *SMALL])
    with pytest.raises(ValueError, match=r"S was trained with the features \[generator,mbr\], but selector.features "
                                         r"is \[\]: set selector.features=\[generator,mbr\]"):
        select_memories(plain, DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1),
                        RunPaths(plain.run_dir), "dev", 0)


def test_the_retrieved_memory_is_the_top_bm25_hits_of_the_rows_asked(run_root):
    hits = dev_hits(run_root)
    for top in (1, 5):
        config = load_config(DEMO_CONFIG, [f"run.root={run_root}", *SMALL, f"selector.mbr_retrieved_hits={top}"])
        paths = RunPaths(config.run_dir)
        assert list(iter_retrieved(config, paths, "dev", 20)) == [h[:top] for h in hits]
        assert list(iter_retrieved(config, paths, "dev", 20, rows=[1, 6, 19])) == [h[:top] for h in
                                                                                  (hits[1], hits[6], hits[19])]
    with pytest.raises(DataError, match=r"dev.jsonl: 20 lines for 21 dev examples"):
        list(iter_retrieved(config, paths, "dev", 21))
    with pytest.raises(ValueError, match="give them ascending, each once"):
        list(iter_retrieved(config, paths, "dev", 20, rows=[3, 3]))


def test_a_bm25_memory_file_is_checked_line_by_line_for_every_reader(run_root, tmp_path):
    # the generator's training reads the hits whole through the same reader as MBR's anchors
    run = tmp_path / "demo"
    shutil.copytree(run_root / "demo" / "tokenizer", run / "tokenizer")
    paths = RunPaths(run)
    with pytest.raises(DataError, match=r"dev.jsonl: no BM25 memory for dev; run launch/retrieve.py with this "
                                        r"config first"):
        list(bm25_hits(paths, "dev", 20))
    lines = (run_root / "demo" / "memory" / "bm25" / "dev.jsonl").read_text().splitlines()
    lines[2] = json.dumps({"memories": "a string, not a list"})
    paths.bm25_memory("dev").parent.mkdir(parents=True)
    paths.bm25_memory("dev").write_text("\n".join(lines) + "\n")
    assert list(bm25_hits(paths, "dev", 20, rows=[0, 1])) == dev_hits(run_root)[:2]
    with pytest.raises(DataError, match=r"dev.jsonl:3: \"memories\" must be a list of strings \(the ranked BM25 "
                                        r"hits\), got a str"):
        list(bm25_hits(paths, "dev", 20))


def test_selector_settings_that_cannot_work_are_refused_up_front():
    with pytest.raises(ValueError, match=r"selector.features must name distinct features among generator, mbr, "
                                         r"got \['generator', 'beam'\]"):
        check_selector_config(SelectorConfig(features=["generator", "beam"]))
    with pytest.raises(ValueError, match="selector.mbr_temperature must be positive"):
        check_selector_config(SelectorConfig(kind="mbr", mbr_temperature=0.0))
    for key, zero in (("mbr_retrieved_weight", "the consensus alone"), ("no_memory_weight", "off")):
        for weight in (-1.0, float("nan"), float("inf")):
            with pytest.raises(ValueError, match=rf"selector.{key} must be a finite weight of 0 or more "
                                                 rf"\(0: {zero}; null: chosen on dev\), got {weight}"):
                check_selector_config(SelectorConfig(**{key: weight}))
            with pytest.raises(ValueError, match=rf"selector.{key}_choices must be finite weights of 0 or "
                                                 rf"more, got \[1.0, {weight}\]"):
                check_selector_config(SelectorConfig(**{f"{key}_choices": [1.0, weight]}))
    with pytest.raises(ValueError, match=r"selector.mbr_temperature_choices must be positive temperatures \(or null"):
        check_selector_config(SelectorConfig(kind="mbr", mbr_temperature_choices=[None, 0.0]))
    with pytest.raises(ValueError, match=r"selector.mbr_temperature is 0.5, but with selector.mbr_retrieved_weight "
                                         r"null each round chooses it on dev among selector.mbr_temperature_choices: "
                                         r"set selector.mbr_temperature_choices=\[\] to keep 0.5"):
        check_selector_config(SelectorConfig(kind="mbr", mbr_temperature=0.5))
    check_selector_config(SelectorConfig(kind="mbr", mbr_temperature=0.5, mbr_temperature_choices=[]))
    check_selector_config(SelectorConfig(kind="mbr", mbr_temperature=0.5, mbr_retrieved_weight=2.0))
    with pytest.raises(ValueError, match=r"selector.mbr_retrieved_weight is null, to be chosen on dev among "
                                         r"selector.mbr_retrieved_weight_choices, but there are none"):
        check_selector_config(SelectorConfig(mbr_retrieved_weight_choices=[]))
    with pytest.raises(ValueError, match=r"S's feature 'mbr' weighs the retrieved memory the same in its training and "
                                         r"in the rounds: set selector.mbr_retrieved_weight to a number"):
        check_selector_config(SelectorConfig(kind="trained", features=["mbr"]))
    check_selector_config(SelectorConfig(kind="trained", features=["mbr"], mbr_retrieved_weight=0.0))
    with pytest.raises(ValueError, match=r"selector.mbr_retrieved_hits must be at least 1 \(the top BM25 hits MBR "
                                         r"weighs\), got 0"):
        check_selector_config(SelectorConfig(mbr_retrieved_hits=0))
    with pytest.raises(ValueError, match="selector.mbr_references samples gives minimum Bayes risk its pseudo-"
                                         "references; it needs selector.kind mbr"):
        check_selector_config(SelectorConfig(kind="trained", mbr_references="samples"))
    with pytest.raises(ValueError, match="samples .selector.mbr_references samples. are draws from the generator "
                                         "and weigh the same: leave selector.mbr_temperature null"):
        check_selector_config(SelectorConfig(kind="mbr", mbr_references="samples", mbr_temperature=1.0))
    with pytest.raises(ValueError, match=r"selector.no_memory_weight is null, to be chosen on dev among "
                                         r"selector.no_memory_weight_choices, but there are none"):
        check_selector_config(SelectorConfig(no_memory_weight=None, no_memory_weight_choices=[]))
    with pytest.raises(ValueError, match=r"selector.no_memory_weight adds the no-memory baseline's opinion to MBR's "
                                         r"score; it needs selector.kind mbr \(or the weight 0\)"):
        check_selector_config(SelectorConfig(kind="trained", no_memory_weight=None))


def test_training_a_selector_that_needs_none_is_refused(tmp_path):
    config = load_config(DEMO_CONFIG, [f"run.root={tmp_path}"])  # selector.kind mbr, the default
    with pytest.raises(ValueError, match=r"^selector.kind is mbr, which trains nothing: set selector.kind=trained"):
        train_selector(config, DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1),
                       RunPaths(config.run_dir))
    assert not (tmp_path / "demo").exists()


def test_the_dev_choice_is_described_by_its_best_and_the_best_under_each_setting():
    choices = [(None, 0.0, 0.0), (None, 2.0, 0.0), (0.1, 0.0, 0.0), (0.1, 2.0, 0.0)]
    scores = [30.0, 31.5, 31.5, 30.25]
    assert describe_choices(choices, scores) == (
        "31.50 (W 2, T null, V 0); the best under each setting: T null: 31.50 (W 2, T null, V 0); "
        "T 0.1: 31.50 (W 0, T 0.1, V 0); W 0: 31.50 (W 0, T 0.1, V 0); W 2: 31.50 (W 2, T null, V 0)")
    assert describe_choices([(None, 4.0, 8.0)], [42.0]) == "42.00 (W 4, T null, V 8)"
