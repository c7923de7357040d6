"""The memory selector: its loss against hand-computed values, the cross-encoder model."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import sacrebleu
import torch
from transformers import BertConfig, BertModel, BertTokenizer

from selfmem.common.config import Config, SelectorConfig, TrainConfig
from selfmem.common.distributed import DistEnv
from selfmem.common.tokenizer import HFTokenizer
from selfmem.models import ModelConfig, Seq2SeqModel
from selfmem.models.seq2seq import slotted_positions
from selfmem.models.selector import (
    GeneratorEncoderBackbone,
    HFEncoderBackbone,
    Selector,
    pair_encoder,
    pair_ids,
)
from selfmem.select.candidates import SelectorExample
from selfmem.select.pick import augment, top_b
from selfmem.train.loop import fit
from selfmem.train.selector import SelectorTask, linear_schedule, listwise_kl, metric_targets, selector_depends_on

ONE_PROCESS = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1)


def test_loss_equals_the_hand_computed_kl():
    metric = torch.tensor([[10.0, 20.0, 40.0]])
    scores = torch.tensor([[0.1, 0.2, 0.3]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    # by hand: min-max normalised 0, 1/3, 1; over temperature 0.5: 0, 2/3, 2
    logits = [0.0, 2 / 3, 2.0]
    target = [math.exp(x) / sum(math.exp(y) for y in logits) for x in logits]
    predicted = [math.exp(x) / sum(math.exp(y) for y in (0.1, 0.2, 0.3)) for x in (0.1, 0.2, 0.3)]
    expected = sum(t * math.log(t / p) for t, p in zip(target, predicted))
    assert metric_targets(metric, mask, 0.5)[0].tolist() == pytest.approx(target, rel=1e-6)
    assert listwise_kl(scores, metric, mask, 0.5).item() == pytest.approx(expected, rel=1e-5)


def test_gradient_raises_the_best_candidate():
    metric = torch.tensor([[30.0, 55.0, 12.0, 40.0]])
    scores = torch.zeros(1, 4, requires_grad=True)
    listwise_kl(scores, metric, torch.ones(1, 4, dtype=torch.bool), 0.5).backward()
    assert scores.grad[0].argmin().item() == 1  # gradient descent moves the best score up most
    assert scores.grad[0, 1] < 0 and scores.grad[0, 2] > 0
    # KL(target || softmax(scores)) has the gradient softmax(scores) - target; the target is the
    # softmax of the metric scaled to [0, 1] in the row ((m - 12) / 43), over the temperature
    target = torch.softmax(((metric - 12.0) / 43.0) / 0.5, dim=1)
    torch.testing.assert_close(scores.grad, torch.full((1, 4), 0.25) - target, rtol=1e-6, atol=1e-7)


def test_padding_and_ties():
    metric = torch.tensor([[10.0, 20.0, 40.0, 0.0], [7.0, 7.0, 0.0, 0.0]])
    scores = torch.tensor([[0.1, 0.2, 0.3, 9.0], [1.0, -1.0, 5.0, 5.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    targets = metric_targets(metric, mask, 0.5)
    assert targets[1].tolist() == pytest.approx([0.5, 0.5, 0.0, 0.0])  # equal metrics: uniform
    assert targets[0, 3] == 0
    alone = listwise_kl(scores[:1, :3], metric[:1, :3], mask[:1, :3], 0.5)
    second = listwise_kl(scores[1:, :2], metric[1:, :2], mask[1:, :2], 0.5)
    assert listwise_kl(scores, metric, mask, 0.5).item() == pytest.approx((alone + second).item(), rel=1e-6)


def test_pair_truncation_cuts_the_source_first():
    assert pair_ids([5, 6, 7], [8, 9], cls_id=1, sep_id=4, max_len=16) == [1, 5, 6, 7, 4, 8, 9, 4]
    assert pair_ids([5, 6, 7], [8, 9], cls_id=1, sep_id=4, max_len=6) == [1, 5, 4, 8, 9, 4]
    assert pair_ids([5, 6, 7], list(range(10, 20)), cls_id=1, sep_id=4, max_len=8) == [1, 4, 10, 11, 12, 13, 14, 4]


def padded(rows, pad):
    width = max(map(len, rows))
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows])


def test_generator_encoder_selector(tmp_path):
    torch.manual_seed(0)
    generator = Seq2SeqModel(ModelConfig(vocab_size=40, d_model=16, encoder_layers=2, decoder_layers=1, heads=2,
                                         ffn_dim=32, max_positions=32, dropout=0.0, memory="joint"))
    backbone = GeneratorEncoderBackbone.from_generator(generator)
    for name, value in generator.encoder.state_dict().items():
        assert torch.equal(backbone.encoder.state_dict()[name], value)
    selector = Selector(backbone, dropout=0.0).eval()
    pairs = [pair_ids([5, 6, 7], [8, 9], 1, 4, 32), pair_ids([5, 6, 7], [8, 10, 11, 12], 1, 4, 32)]
    with torch.no_grad():
        scores = selector(padded(pairs, 0))
    assert scores.shape == (2,)
    with torch.no_grad():
        alone = selector(torch.tensor([pairs[0]]))
    assert scores[0].item() == pytest.approx(alone[0].item(), abs=1e-6)  # padding
    assert scores[0] != scores[1]
    # the copy is the selector's own: training it leaves the generator as it was
    assert backbone.encoder.embed_tokens.weight.data_ptr() != generator.encoder.embed_tokens.weight.data_ptr()
    selector.save(tmp_path)
    with torch.no_grad():
        assert torch.equal(Selector.load(tmp_path)(padded(pairs, 0)), scores)


def test_a_slotted_generator_encoder_reads_the_candidate_in_the_memory_slot():
    # the demo's layout in small: source slot 6, memory slot 4, max_positions 6 + 4 + 1 + 1
    generator = Seq2SeqModel(ModelConfig(vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1, heads=2,
                                         ffn_dim=32, max_positions=12, memory="joint", source_slot=6, memory_slot=4))
    selector = Selector(GeneratorEncoderBackbone.from_generator(generator)).eval()
    tokenizer = SimpleNamespace(encode=lambda text: [int(t) for t in text.split()], vocab_size=40, pad_id=0, bos_id=1,
                                eos_id=2, sep_id=4)
    encode = pair_encoder(selector, tokenizer, max_len=256)
    long = encode("10 11 12 13 14 15 16 17", "20 21 22 23 24 25 26")
    assert long == [1, 10, 11, 12, 13, 4, 20, 21, 22, 4]  # cls, 4 source tokens and sep; 3 candidate tokens and sep
    # the positions the generator gave its source and memory: the candidate starts the memory's slot
    assert slotted_positions(torch.tensor([long]), 4, 6, 4).tolist() == [list(range(10))]
    short = encode("10 11", "20 21")
    assert short == [1, 10, 11, 4, 20, 21, 4]
    assert slotted_positions(torch.tensor([short]), 4, 6, 4).tolist() == [[0, 1, 2, 3, 6, 7, 8]]
    # the backbone is the generator's encoder, its slotted positions included
    with torch.no_grad():
        for ids in (long, short):
            assert torch.equal(selector.backbone(torch.tensor([ids])), generator.eval().encoder(torch.tensor([ids]))[0])


def test_hf_encoder_selector(tmp_path):
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=32, pad_token_id=0), add_pooling_layer=False)
    bert.save_pretrained(tmp_path)
    selector = Selector(HFEncoderBackbone(tmp_path, pad_id=0), dropout=0.0).eval()
    ids = padded([[2, 5, 6, 3, 7, 3], [2, 8, 3, 9, 3]], 0)
    with torch.no_grad():
        expected = selector.head(bert.eval()(input_ids=ids, attention_mask=ids.ne(0)).last_hidden_state[:, 0])
        scores = selector(ids)
        alone = selector(ids[1:, :5])
    assert scores.tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    assert alone[0].item() == pytest.approx(scores[1].item(), abs=1e-5)
    selector.save(tmp_path / "selector")
    with torch.no_grad():
        assert torch.equal(Selector.load(tmp_path / "selector")(ids), scores)


def test_top_b_breaks_ties_by_candidate_order_and_drops_duplicates():
    candidates = ["a", "b", "c", "b", "d", "e"]
    scores = [0.5, 0.9, 0.5, 0.95, 0.1, 0.5]
    assert top_b(candidates, scores, 1) == ["b"]
    assert top_b(candidates, scores, 4) == ["b", "a", "c", "e"]  # "b" once; a, c, e tie in candidate order
    assert top_b(candidates, scores, 10) == ["b", "a", "c", "e", "d"]
    with pytest.raises(ValueError, match="6 candidates but 2 scores"):
        top_b(candidates, scores[:2], 1)


def test_augment_grows_by_one_up_to_the_bound_without_duplicates():
    memories = ["retrieved"]
    for round_pick in ["p1", "p2", "p2", "p3", "p4"]:
        memories = augment(memories, round_pick, max_memories=3)
    assert memories == ["retrieved", "p3", "p4"]  # p2 was not added twice; p1, p2 left oldest first
    assert augment(["retrieved", "p1"], "p2", max_memories=3) == ["retrieved", "p1", "p2"]
    assert augment(["retrieved", "p1", "p2"], "p3", max_memories=3, keep_retrieved=False) == ["p1", "p2", "p3"]
    with pytest.raises(ValueError, match="max_memories must leave room"):
        augment(["retrieved"], "p1", max_memories=1)


def planted_examples(count: int, seed: int) -> tuple[list[SelectorExample], list[str]]:
    """Copy tasks whose 8 candidates carry 0-6 corrupted tokens, drawn from ids no source
    uses: a detectable flaw that lowers the metric. Candidate 0 (the "beam top-1") is random."""
    g = torch.Generator().manual_seed(seed)
    examples, references = [], []
    for _ in range(count):
        source = torch.randint(5, 30, (8,), generator=g).tolist()
        reference = " ".join(map(str, source))
        candidates = []
        for _ in range(8):
            candidate = list(source)
            flaws = int(torch.randint(0, 7, (1,), generator=g))
            for position in torch.randperm(8, generator=g)[:flaws].tolist():
                candidate[position] = int(torch.randint(30, 40, (1,), generator=g))
            candidates.append(candidate)
        texts = [" ".join(map(str, c)) for c in candidates]
        metric = [sacrebleu.sentence_bleu(t, [reference]).score for t in texts]
        examples.append(SelectorExample(reference, texts, metric))
        references.append(reference)
    return examples, references


def test_a_tiny_selector_learns_a_planted_signal(tmp_path):
    train, _ = planted_examples(400, seed=1)
    dev, references = planted_examples(100, seed=2)
    config = SelectorConfig(group_size=8, max_len=24, max_tokens=1200, temperature=0.5)
    def pair(source: str, candidate: str) -> list[int]:  # the texts are token ids written out
        return pair_ids([int(t) for t in source.split()], [int(t) for t in candidate.split()], 1, 4, config.max_len)

    task = SelectorTask(train, dev, references, pair, pad_id=0, config=config, metric="bleu", bleu_tokenize="13a",
                        env=ONE_PROCESS, seed=0)
    torch.manual_seed(0)
    backbone = GeneratorEncoderBackbone(ModelConfig(vocab_size=40, d_model=32, encoder_layers=2, decoder_layers=1,
                                                    heads=4, ffn_dim=64, max_positions=32, dropout=0.0))
    selector = Selector(backbone, dropout=0.0)
    fit(selector, task, TrainConfig(lr=1e-3, warmup_steps=20, max_steps=300, max_epochs=100, patience=100,
                                    log_every=50, save_every=10**6), ONE_PROCESS, tmp_path, 0,
        linear_schedule(20, 300))
    best = Selector.load(tmp_path).eval()
    figures = task.evaluate(best)
    with torch.no_grad():
        picks = [int(task._scores(best, task._collate([ex], [list(range(8))]))[0].argmax()) for ex in dev]
    hits = sum(ex.metric[p] == max(ex.metric) for ex, p in zip(dev, picks)) / len(dev)
    chance = sum(sum(m == max(ex.metric) for m in ex.metric) / 8 for ex in dev) / len(dev)
    assert hits > 3 * chance  # best candidate picked far more often than at random
    assert figures["metric"] > figures["top1"] + 10
    assert figures["oracle"] >= figures["metric"]


def test_hf_pair_format_cuts_the_source_first(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefgh"]) + "\n")
    BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=13, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32), add_pooling_layer=False).save_pretrained(tmp_path)
    selector = Selector(HFEncoderBackbone(tmp_path, pad_id=0))
    tokenizer = HFTokenizer(tmp_path)
    assert pair_encoder(selector, tokenizer, 16)("a b c d", "e f") == [2, 5, 6, 7, 8, 3, 9, 10, 3]
    assert pair_encoder(selector, tokenizer, 7)("a b c d", "e f") == [2, 5, 6, 3, 9, 10, 3]
    assert pair_encoder(selector, tokenizer, 7)("a", "b c d e f") == [2, 3, 6, 7, 8, 9, 3]  # the candidate cut too
    tokenizer.hf.model_max_length = 6  # a limit below the positions', as RoBERTa's 512 of 514
    assert pair_encoder(selector, tokenizer, 16)("a b c d", "e f") == [2, 5, 3, 9, 10, 3]


def test_a_selector_checkpoint_depends_on_its_training_settings_not_on_the_rounds():
    keys = selector_depends_on(Config()).keys()
    assert {"selector.lr", "selector.max_epochs", "selector.group_size", "generator.d_model", "train.accumulate",
            "tokenizer.vocab_size", "data.dir", "run.seed"} <= keys
    # read by the rounds only; set from the selector's own section or unused; free to change on a rerun
    assert keys.isdisjoint({"selector.mode", "selector.beam", "selector.max_memories", "selector.keep_retrieved",
                            "train.lr", "train.max_epochs", "train.max_tokens", "train.warmup_steps",
                            "train.label_smoothing", "train.max_steps", "train.patience", "train.save_every",
                            "train.log_every", "train.max_nonfinite", "run.name", "candidates.num_beams"})
    # MBR's settings: read only by S's MBR feature, the retrieved memory's where it weighs
    consensus = {"selector.mbr_utility", "selector.mbr_temperature"}
    retrieved = {"selector.mbr_retrieved_weight", "selector.mbr_retrieved_hits"}
    assert keys.isdisjoint(consensus | retrieved | {"selector.mbr_retrieved_weight_choices"})
    with_mbr = Config()
    with_mbr.selector.features = ["generator", "mbr"]
    with_mbr.selector.mbr_retrieved_weight = 8.0  # the feature's weight is fixed; the rounds' dev choice is not S's
    assert consensus | retrieved <= selector_depends_on(with_mbr).keys()
    assert "selector.mbr_retrieved_weight_choices" not in selector_depends_on(with_mbr).keys()
    with_mbr.selector.mbr_retrieved_weight = 0.0
    assert consensus <= selector_depends_on(with_mbr).keys()
    assert selector_depends_on(with_mbr).keys().isdisjoint(retrieved)


def test_features_add_learned_multiples_of_their_values(tmp_path):
    torch.manual_seed(0)
    backbone = GeneratorEncoderBackbone(ModelConfig(vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1,
                                                    heads=2, ffn_dim=32, max_positions=32, dropout=0.0))
    selector = Selector(backbone, dropout=0.0, features=["generator", "mbr"]).eval()
    ids = padded([pair_ids([5, 6, 7], [8, 9], 1, 4, 32), pair_ids([5, 6], [8, 10, 11], 1, 4, 32)], 0)
    values = torch.tensor([[-0.25, 0.5], [-1.5, 0.125]])
    with torch.no_grad():
        own = selector.head.out_proj(torch.tanh(selector.head.dense(backbone(ids)[:, 0]))).squeeze(-1)
        assert selector(ids, values).tolist() == pytest.approx((own + values.sum(1)).tolist(), abs=1e-6)
        selector.head.feature_weights.copy_(torch.tensor([0.375, 2.0]))
        fused = selector(ids, values)
    assert fused.tolist() == pytest.approx((own + 0.375 * values[:, 0] + 2.0 * values[:, 1]).tolist(), abs=1e-6)
    with pytest.raises(ValueError, match=r"adds 2 feature\(s\) of each candidate: pass features of shape \(2, 2\)"):
        selector(ids)
    selector.save(tmp_path)
    loaded = Selector.load(tmp_path)
    assert loaded.features == ["generator", "mbr"] and loaded.head.feature_weights.tolist() == [0.375, 2.0]
    with torch.no_grad():
        assert torch.equal(loaded(ids, values), fused)
    assert Selector(backbone).features == [] and Selector(backbone).head.feature_weights is None


def test_the_selector_task_trains_the_feature_weights():
    train, references = planted_examples(4, seed=1)
    # the generator's scores follow the metric; the second feature is noise
    noise = torch.Generator().manual_seed(3)
    with_features = [SelectorExample(ex.source, ex.candidates, ex.metric,
                                     [[m / 100, float(torch.rand(1, generator=noise))] for m in ex.metric])
                     for ex in train]
    config = SelectorConfig(group_size=8, max_len=24, max_tokens=1200, temperature=0.5, features=["generator", "mbr"])
    def pair(source: str, candidate: str) -> list[int]:
        return pair_ids([int(t) for t in source.split()], [int(t) for t in candidate.split()], 1, 4, config.max_len)

    task = SelectorTask(with_features, with_features, references, pair, pad_id=0, config=config, metric="bleu",
                        bleu_tokenize="13a", env=ONE_PROCESS, seed=0)
    torch.manual_seed(0)
    backbone = GeneratorEncoderBackbone(ModelConfig(vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1,
                                                    heads=2, ffn_dim=32, max_positions=32, dropout=0.0))
    selector = Selector(backbone, dropout=0.0, features=config.features)
    task.epoch_batches(0)
    tensors = task.collate(list(range(len(with_features))))
    task.loss(selector, tensors).backward()
    # a larger weight on the informative feature lowers the loss
    assert selector.head.feature_weights.grad[0].item() < 0
    # the closed form: each pair's (softmax of its row's scores - its target) times its features
    with torch.no_grad():
        flat = selector(tensors["ids"], tensors["features"])
        mask = tensors["mask"]
        scores = torch.full(mask.shape, -torch.inf).flatten().index_copy(0, tensors["slots"], flat).view(mask.shape)
        residual = torch.softmax(scores, dim=1) - metric_targets(tensors["metric"], mask, config.temperature)
    expected = (residual.flatten()[tensors["slots"], None] * tensors["features"]).sum(0)
    torch.testing.assert_close(selector.head.feature_weights.grad, expected, rtol=1e-5, atol=1e-6)
