"""Minimum Bayes risk selection against sacrebleu: every pair's utility, the expected utility, the pick."""

import json
import math
import random

import numpy as np
import pytest
from conftest import DEMO_DATA
from sacrebleu.metrics import BLEU, CHRF

from selfmem.select.mbr import bleu_matrix, bleu_tokens, chrf_matrix, mbr_score_sets, mbr_scores

# what the vectorised counting could get wrong: empty and one-character texts, punctuation
# beside digits and words, entities, repeated n-grams, non-ASCII, a hyphen at a line's end
TRICKY = ["", "a", "Ja.", "Hallo Welt!", "(Hallo) Welt", "3, 4. ,x", "Größe ünd Maß: 1.5%",
          "a.,b .5 x. .y 5-3 -5 a-b", "&quot;x&quot; &amp;lt; <skipped> y", "line-\nnext line\n end",
          "1,000.5 km/h; 2-3 x--y ...", "die die die die der die", "die die der"]


@pytest.fixture(scope="module")
def texts():
    demo = [json.loads(line)["trg"] for line in (DEMO_DATA / "dev.jsonl").read_text(encoding="utf-8").splitlines()]
    return random.Random(0).sample(demo, 30) + TRICKY


def test_bleu_tokens_are_sacrebleus(texts):
    for tokenize in ("13a", "intl", "none", "char"):
        tokenizer = BLEU(tokenize=tokenize).tokenizer
        assert [bleu_tokens(t, tokenize) for t in texts] == [tokenizer(t.rstrip()).split() for t in texts]


@pytest.mark.parametrize("tokenize", ["13a", "intl"])
def test_bleu_matrix_is_sacrebleus_sentence_bleu_of_every_pair(texts, tokenize):
    metric = BLEU(tokenize=tokenize, effective_order=True)
    got = bleu_matrix(texts, tokenize)
    want = np.array([[metric.sentence_score(h, [r]).score for r in texts] for h in texts])
    assert np.abs(got - want).max() < 1e-9
    assert (want > 0).mean() > 0.3 and (want == 0).any()  # both cases are exercised


def test_chrf_matrix_is_sacrebleus_chrf_plus_plus_of_every_pair(texts):
    metric = CHRF(word_order=2)
    got = chrf_matrix(texts)
    want = np.array([[metric.sentence_score(h, [r]).score for r in texts] for h in texts])
    assert np.abs(got - want).max() < 1e-9


def test_mbr_scores_are_the_expected_utility_over_distinct_candidates(texts):
    metric = BLEU(tokenize="13a", effective_order=True)
    candidates = texts[:6] + [texts[2]]  # the beam returned texts[2] twice
    generator = [-0.3, -0.5, -0.9, -0.2, -1.4, -0.7, -0.4]
    distinct = texts[:6]

    def utility(h, r):
        return metric.sentence_score(h, [r]).score

    uniform = mbr_scores(candidates, None, "bleu", None)
    want = [sum(utility(c, r) for r in distinct) / len(distinct) for c in candidates]
    assert uniform == pytest.approx(want, abs=1e-9)

    # weighted by softmax(score / T); a text's weight is its best score
    weighted = mbr_scores(candidates, generator, "bleu", 0.5)
    best = {**{t: s for t, s in zip(candidates, generator)}, texts[2]: -0.4}
    z = sum(math.exp(best[r] / 0.5) for r in distinct)
    want = [sum(math.exp(best[r] / 0.5) / z * utility(c, r) for r in distinct) for c in candidates]
    assert weighted == pytest.approx(want, abs=1e-9)
    assert weighted[2] == weighted[6]


def test_mbr_against_samples_counts_each_draw(texts):
    candidates = texts[:5]
    samples = [texts[1], texts[7], texts[7], texts[8], texts[1], texts[1]]  # drawn again and again
    for utility, metric in (("bleu", BLEU(tokenize="13a", effective_order=True)), ("chrf", CHRF(word_order=2))):
        got = mbr_scores(candidates, None, utility, None, references=samples)
        want = [sum(metric.sentence_score(c, [r]).score for r in samples) / len(samples) for c in candidates]
        assert got == pytest.approx(want, abs=1e-9)
    with pytest.raises(ValueError, match="samples as pseudo-references weigh the same"):
        mbr_scores(candidates, [0.0] * 5, "bleu", 1.0, references=samples)


def test_the_retrieved_memory_weighs_beside_the_pseudo_references(texts):
    metric = BLEU(tokenize="13a", effective_order=True)
    candidates, anchors, samples = texts[:5], [texts[9], texts[1]], [texts[1], texts[7], texts[7]]

    def expected(references, weight):  # the anchors share ``weight`` against the references' total of 1
        return [(sum(metric.sentence_score(c, [r]).score for r in references) / len(references)
                 + weight * sum(metric.sentence_score(c, [a]).score for a in anchors) / len(anchors)) / (1 + weight)
                for c in candidates]

    got = mbr_scores(candidates, None, "bleu", None, anchors=anchors, anchor_weight=2.0)
    assert got == pytest.approx(expected(candidates, 2.0), abs=1e-9)  # texts[1] is a candidate and an anchor
    got = mbr_scores(candidates, None, "bleu", None, references=samples, anchors=anchors, anchor_weight=0.5)
    assert got == pytest.approx(expected(samples, 0.5), abs=1e-9)
    plain = mbr_scores(candidates, None, "bleu", None)
    # no weight, or no retrieved memory (empty texts are none): the consensus alone
    assert mbr_scores(candidates, None, "bleu", None, anchors=anchors, anchor_weight=0.0) == plain
    assert mbr_scores(candidates, None, "bleu", None, anchors=["", ""], anchor_weight=2.0) == plain


def test_scores_for_several_settings_at_once_are_those_of_each_alone(texts):
    # dev chooses the temperature and the retrieved memory's weight from these sets, then the
    # selection scores with the chosen pair alone (without reading the hits where the weight is
    # 0): the picks must agree bit for bit
    candidates, anchors, samples = [*texts[:6], texts[2]], [texts[9], texts[1], ""], [texts[1], texts[7], texts[7]]
    generator = [-0.1 * i for i in range(7)]
    for utility in ("bleu", "chrf"):
        for references, temperatures in ((None, [None, 1.0, 0.1]), (samples, [None])):
            settings = [(t, w) for t in temperatures for w in (0.0, 1.0, 2.0, 16.0)]
            sets = mbr_score_sets(candidates, generator, utility, settings, references=references, anchors=anchors)
            assert sets == [mbr_scores(candidates, generator, utility, t, references=references,
                                       anchors=anchors if w > 0 else [], anchor_weight=w) for t, w in settings]
            assert len({tuple(x) for x in sets}) == len(settings)  # every pair scores differently here
    assert mbr_score_sets(candidates, None, "bleu", [(None, 0.0), (None, 2.0)], anchors=["", ""]) == \
        [mbr_scores(candidates, None, "bleu", None)] * 2


def test_mbr_refuses_what_it_cannot_compute(texts):
    with pytest.raises(ValueError, match="one generator score per candidate"):
        mbr_scores(texts[:3], [0.0, 0.0], "bleu", 1.0)
    with pytest.raises(ValueError, match="unknown MBR utility 'ter'"):
        mbr_scores(texts[:3], None, "ter", None)
