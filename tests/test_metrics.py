import json
import math
from importlib.metadata import version
from pathlib import Path

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from selfmem.common import metrics
from selfmem.common.metrics import (
    Score,
    corpus_bleu,
    corpus_chrf,
    corpus_rouge,
    corpus_ter,
    evaluate,
    headline,
    headline_score,
    sentence_bleu,
    sentence_rouge,
)

ROOT = Path(__file__).parent
DEMO_DEV = ROOT.parent / "data" / "demo" / "dev.jsonl"
SUM_DEV = ROOT / "fixtures" / "debian_sum" / "dev.jsonl"


def _read_jsonl(path, n):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


def _edit(i, sentence):
    # Alternate two deterministic corruptions so the corpus scores lie strictly between 0 and 100.
    words = sentence.split()
    if len(words) < 3:
        return sentence
    if i % 2 == 0:
        del words[1]
    else:
        words[1], words[2] = words[2], words[1]
    return " ".join(words)


@pytest.fixture(scope="module")
def german():
    refs = [row["trg"] for row in _read_jsonl(DEMO_DEV, 20)]
    hyps = [_edit(i, ref) for i, ref in enumerate(refs)]
    return hyps, refs


def _first_sentence(document):
    head = document.split("\n")[0]
    return head.split(". ")[0].rstrip(".") + "."


@pytest.fixture(scope="module")
def summaries():
    rows = _read_jsonl(SUM_DEV, 40)
    return [_first_sentence(r["document"]) for r in rows], [r["summary"] for r in rows]


# ---------------------------------------------------------------- corpus BLEU / chrF++ / TER


def test_corpus_scores_equal_sacrebleu(german):
    hyps, refs = german
    bleu, chrf, ter = corpus_bleu(hyps, refs), corpus_chrf(hyps, refs), corpus_ter(hyps, refs)
    assert bleu.value == sacrebleu.corpus_bleu(hyps, [refs]).score
    assert chrf.value == sacrebleu.corpus_chrf(hyps, [refs], word_order=2).score
    assert ter.value == sacrebleu.corpus_ter(hyps, [refs]).score
    for score in (bleu, chrf, ter):
        assert 0.0 < score.value < 100.0
    assert (bleu.name, chrf.name, ter.name) == ("bleu", "chrf", "ter")


def test_intl_tokenizer_equals_sacrebleu(german):
    hyps, refs = german
    expected = sacrebleu.corpus_bleu(hyps, [refs], tokenize="intl").score
    assert corpus_bleu(hyps, refs, tokenize="intl").value == expected


def test_perfect_match(german):
    _, refs = german
    # exp(mean(log p_n)) of all-ones precisions is 100 up to float rounding.
    assert corpus_bleu(refs, refs).value == pytest.approx(100.0, abs=1e-9)
    assert corpus_chrf(refs, refs).value == 100.0
    assert corpus_ter(refs, refs).value == 0.0


def test_bleu_hand_derived():
    ref = "the quick brown fox jumps over the lazy dog"  # 9 tokens
    hyp = "the quick brown fox jumps over lazy dog"  # 8 tokens: "the" before "lazy" dropped
    # Clipped n-gram matches: unigrams 8/8; bigrams 6/7 (all but "over lazy");
    # trigrams 4/6 ("jumps over lazy", "over lazy dog" miss); 4-grams 3/5.
    # Brevity penalty exp(1 - r/c) with r=9, c=8.
    expected = 100 * math.exp(1 - 9 / 8) * (8 / 8 * 6 / 7 * 4 / 6 * 3 / 5) ** 0.25
    assert corpus_bleu([hyp], [ref]).value == pytest.approx(expected, abs=1e-9)
    # TER: one edit (the missing "the") per 9 reference words.
    assert corpus_ter([hyp], [ref]).value == pytest.approx(100 / 9)


def test_signatures_record_settings(german):
    hyps, refs = german
    assert "tok:13a" in corpus_bleu(hyps, refs).signature
    intl = corpus_bleu(hyps, refs, tokenize="intl").signature
    assert "tok:intl" in intl and "tok:13a" not in intl
    assert "nrefs:1" in intl and f"version:{sacrebleu.__version__}" in intl
    assert "nw:2" in corpus_chrf(hyps, refs).signature
    assert "tok:tercom" in corpus_ter(hyps, refs).signature


# ---------------------------------------------------------------- ROUGE


def test_corpus_rouge_equals_rouge_score_average(summaries):
    hyps, refs = summaries
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"], use_stemmer=True)
    per_example = [scorer.score(ref, hyp) for hyp, ref in zip(hyps, refs)]
    got = corpus_rouge(hyps, refs)
    assert set(got) == {"rouge1", "rouge2", "rougeLsum"}
    for key, score in got.items():
        expected = 100 * sum(s[key].fmeasure for s in per_example) / len(per_example)
        assert score.value == pytest.approx(expected, abs=1e-12)
        assert score.name == key
        assert 0.0 < score.value < 100.0
        assert score.signature == f"rouge-score:{version('rouge-score')}|stem:yes|lsum:newline"


def test_rouge_lsum_splits_sentences_on_newlines():
    ref = "cats sleep all day\ndogs bark at night"
    hyp = "dogs bark at night\ncats sleep all day"
    # As one sequence the longest common subsequence is one sentence (4 of 8 tokens):
    # ROUGE-L F1 = 0.5.
    # Sentence-wise, each reference sentence is matched in full: ROUGE-Lsum F1 = 1.
    reference = rouge_scorer.RougeScorer(["rougeL", "rougeLsum"], use_stemmer=True).score(ref, hyp)
    assert reference["rougeL"].fmeasure == pytest.approx(0.5)
    lsum = corpus_rouge([hyp], [ref])["rougeLsum"].value
    assert lsum == pytest.approx(100 * reference["rougeLsum"].fmeasure)
    assert lsum == pytest.approx(100.0)


# ---------------------------------------------------------------- sentence scores


def test_sentence_bleu_equals_sacrebleu(german):
    hyps, refs = german
    for hyp, ref in zip(hyps, refs):
        assert sentence_bleu(hyp, ref) == sacrebleu.sentence_bleu(hyp, [ref]).score
        expected_intl = sacrebleu.sentence_bleu(hyp, [ref], tokenize="intl").score
        assert sentence_bleu(hyp, ref, tokenize="intl") == expected_intl
    # Effective order: a 2-token exact match has no 3- or 4-grams yet still scores 100.
    assert sentence_bleu("2 Syntaxfehler", "2 Syntaxfehler") == pytest.approx(100.0, abs=1e-9)


@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.2, 0.8)])
def test_sentence_rouge_is_weighted_sum(summaries, weights):
    hyps, refs = summaries
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2"], use_stemmer=True)
    for hyp, ref in zip(hyps, refs):
        s = scorer.score(ref, hyp)
        expected = 100 * (weights[0] * s["rouge1"].fmeasure + weights[1] * s["rouge2"].fmeasure)
        assert sentence_rouge(hyp, ref, weights=weights) == pytest.approx(expected, abs=1e-12)


def test_sentence_metric_objects_are_reused(monkeypatch):
    built = []

    class CountingBLEU(sacrebleu.BLEU):
        def __init__(self, *args, **kwargs):
            built.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(metrics, "BLEU", CountingBLEU)
    metrics._sentence_bleu_metric.cache_clear()
    try:
        for _ in range(5):
            sentence_bleu("a b c", "a b d")
        sentence_bleu("a b c", "a b d", tokenize="intl")
    finally:
        metrics._sentence_bleu_metric.cache_clear()
    assert len(built) == 2
    assert metrics._rouge_scorer(("rouge1", "rouge2")) is metrics._rouge_scorer(("rouge1", "rouge2"))


# ---------------------------------------------------------------- evaluate / headline


def test_evaluate_bleu(german):
    hyps, refs = german
    scores = evaluate("bleu", hyps, refs, bleu_tokenize="intl")
    assert set(scores) == {"bleu", "chrf", "ter"}
    assert scores["bleu"] == corpus_bleu(hyps, refs, tokenize="intl")
    assert scores["chrf"] == corpus_chrf(hyps, refs)
    assert scores["ter"] == corpus_ter(hyps, refs)
    assert headline("bleu", scores) == scores["bleu"].value


def test_evaluate_rouge(summaries):
    hyps, refs = summaries
    scores = evaluate("rouge", hyps, refs)
    assert scores == corpus_rouge(hyps, refs)
    expected = (scores["rouge1"].value + scores["rouge2"].value + scores["rougeLsum"].value) / 3
    assert headline("rouge", scores) == pytest.approx(expected)


def test_headline_rouge_hand_values():
    values = {"rouge1": 45.0, "rouge2": 21.0, "rougeLsum": 42.0}
    scores = {k: Score(k, v, "sig") for k, v in values.items()}
    assert headline("rouge", scores) == pytest.approx(36.0)


# ---------------------------------------------------------------- errors

CORPUS_FUNCTIONS = [
    corpus_bleu,
    corpus_chrf,
    corpus_ter,
    corpus_rouge,
    lambda h, r: evaluate("bleu", h, r),
    lambda h, r: evaluate("rouge", h, r),
]


@pytest.mark.parametrize("fn", CORPUS_FUNCTIONS)
def test_length_mismatch_names_both_lengths(fn):
    with pytest.raises(ValueError, match=r"3 hypotheses, 2 references"):
        fn(["a", "b", "c"], ["a", "b"])


@pytest.mark.parametrize("fn", CORPUS_FUNCTIONS)
def test_empty_input(fn):
    with pytest.raises(ValueError, match=r"empty.*0 hypotheses, 0 references"):
        fn([], [])


def test_unknown_metric_lists_valid_names():
    with pytest.raises(ValueError, match=r"'meteor'.*bleu, rouge"):
        evaluate("meteor", ["a"], ["a"])
    with pytest.raises(ValueError, match=r"'meteor'.*bleu, rouge"):
        headline("meteor", {})


@pytest.mark.parametrize("metric", ["bleu", "rouge"])
def test_headline_score_equals_headline_of_evaluate(metric):
    refs = ["the cat sat on the mat", "a quick brown fox jumps", "hello world again"]
    hyps = ["the cat sat on a mat", "a quick fox jumps over", "hello again world"]
    assert headline_score(metric, hyps, refs) == headline(metric, evaluate(metric, hyps, refs))
