"""Minimum Bayes risk selection: no model, the candidates vote for each other.

Each candidate of an example is scored by its expected utility against the example's
candidates as pseudo-references, each weighted by the generator's probability of it (or
all alike): ``score_i = sum_j w_j * utility(c_i, c_j)``. The utility is sentence BLEU or
chrF++ exactly as sacrebleu computes them, but for all pairs at once: every candidate's
n-grams are counted once, and the clipped matches of all pairs come from products of 0/1
vectors, counted as the popcounts of bit sets ANDed together,
``sum_g min(a_g, b_g) = sum_t [a >= t] . [b >= t]`` over the few count levels t.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

BLEU_ORDER = 4
CHRF_CHAR_ORDER, CHRF_WORD_ORDER, CHRF_BETA = 6, 2, 2


@lru_cache(maxsize=None)
def _bleu_tokenizer(tokenize: str):
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize=tokenize).tokenizer


# 13a's rules look at most one character beside what they split, and it pads the line with
# spaces, so a line's tokens are its words' tokens, each word tokenized once (sacrebleu caches
# the calls); 13a joins a hyphen at a line's end with the next line, so newlines take the slow way
WORDWISE_TOKENIZERS = ("13a", "none")


def bleu_tokens(text: str, tokenize: str) -> list[str]:
    """``text``'s tokens as sacrebleu's BLEU with ``tokenize`` makes them."""
    tokenizer = _bleu_tokenizer(tokenize)
    if tokenize in WORDWISE_TOKENIZERS and "\n" not in text:
        return [token for word in text.split() for token in tokenizer(word).split()]
    return tokenizer(text.rstrip()).split()


_PUNCTS = frozenset('!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~')


def chrf_words(text: str) -> list[str]:
    """The words of ``text`` as sacrebleu's chrF++ splits them: one punctuation mark split
    off a word's end, or else off its start."""
    words = []
    for w in text.split():
        if len(w) > 1 and w[-1] in _PUNCTS:
            words += [w[:-1], w[-1]]
        elif len(w) > 1 and w[0] in _PUNCTS:
            words += [w[0], w[1:]]
        else:
            words.append(w)
    return words


class TokenStream:
    """Texts' tokens as one array of integer ids (``ids``) with each token's text (``owner``)."""

    def __init__(self, ids: list[np.ndarray]):
        self.num_texts = len(ids)
        self.owner = np.repeat(np.arange(self.num_texts), [len(x) for x in ids])
        self.ids = np.concatenate(ids).astype(np.int64) if ids else np.zeros(0, np.int64)

    @classmethod
    def of_words(cls, texts: list[list[str]]) -> TokenStream:
        """Texts given as their words, each word an id (BLEU's tokens)."""
        vocabulary: dict[str, int] = {}
        return cls([np.array([vocabulary.setdefault(w, len(vocabulary)) for w in words], dtype=np.int64)
                    for words in texts])

    @classmethod
    def of_characters(cls, texts: list[str]) -> TokenStream:
        """Texts as their characters without whitespace (chrF's tokens)."""
        return cls([np.frombuffer("".join(t.split()).encode("utf-32-le"), dtype=np.uint32) for t in texts])


def common_bits(rows: np.ndarray) -> np.ndarray:
    """``out[i, j]``: the columns where boolean rows i and j are both True, as popcounts of the
    rows packed into 64-bit words (exact, and free of BLAS threads, which on matrices this
    small cost more in waiting than they save)."""
    packed = np.packbits(rows, axis=1)
    packed = np.ascontiguousarray(np.pad(packed, ((0, 0), (0, -packed.shape[1] % 8)))).view(np.uint64)
    return np.bitwise_count(packed[:, None, :] & packed[None, :, :]).sum(-1, dtype=np.int64)


def pairwise_statistics(stream: TokenStream, max_order: int) -> tuple[np.ndarray, np.ndarray]:
    """``matches[n - 1, i, j]``: the clipped matches of text i's n-grams in text j's
    (``sum_g min(count_i(g), count_j(g))``), and ``totals[n - 1, i]``: text i's n-grams."""
    k = stream.num_texts
    matches, totals = np.zeros((max_order, k, k)), np.zeros((max_order, k))
    base = int(stream.ids.max()) + 1 if stream.ids.size else 1
    key = stream.ids  # key[p]: the n-gram starting at token p, as an id below len(ids) * base
    for n in range(1, max_order + 1):
        if n > 1:
            key = key[:-1] * base + stream.ids[n - 1:]
        if key.size == 0:
            break
        grams, key = np.unique(key, return_inverse=True)  # compact ids, so keys never overflow
        within = stream.owner[:key.size] == stream.owner[n - 1:]  # windows inside one text
        rows, cols = stream.owner[:key.size][within], key[within]
        totals[n - 1] = np.bincount(rows, minlength=k)
        table = np.bincount(rows * grams.size + cols, minlength=k * grams.size).reshape(k, grams.size)
        # one column per n-gram and count level it reaches somewhere: [count >= level]
        peak = table.max(0)
        gram, level = np.nonzero(np.arange(1, int(peak.max(initial=0)) + 1)[None, :] <= peak[:, None])
        matches[n - 1] = common_bits(table[:, gram] > level)  # level is 0-based
    return matches, totals


def bleu_matrix(texts: list[str], tokenize: str = "13a") -> np.ndarray:
    """``U[i, j]``: sentence BLEU of text i against text j as reference, as
    sacrebleu.sentence_bleu computes it (exp smoothing, effective order)."""
    matches, totals = pairwise_statistics(TokenStream.of_words([bleu_tokens(t, tokenize) for t in texts]),
                                          BLEU_ORDER)
    hyp_len, ref_len = totals[0][:, None], totals[0][None, :]
    total = np.broadcast_to(totals[:, :, None], matches.shape)  # [n, i, j]: the hypothesis i's n-grams
    active = total > 0  # effective order: orders the hypothesis has n-grams of
    zero = (matches == 0) & active
    halvings = np.cumsum(zero, axis=0)  # exp smoothing: each unmatched order halves once more
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(zero, 100.0 / (2.0 ** halvings * total), 100.0 * matches / total)
        log_mean = np.where(active, np.log(np.where(active, precision, 1.0)), 0.0).sum(0) / np.maximum(active.sum(0), 1)
        brevity = np.where(hyp_len >= ref_len, 1.0, np.exp(1.0 - ref_len / np.maximum(hyp_len, 1e-300)))
    brevity = np.where(hyp_len > 0, brevity, 0.0)
    return np.where(matches.sum(0) > 0, brevity * np.exp(log_mean), 0.0)


def chrf_matrix(texts: list[str]) -> np.ndarray:
    """``U[i, j]``: sentence chrF++ of text i against text j as reference, as sacrebleu's
    ``CHRF(word_order=2).sentence_score`` computes it."""
    char_matches, char_totals = pairwise_statistics(TokenStream.of_characters(texts), CHRF_CHAR_ORDER)
    word_matches, word_totals = pairwise_statistics(TokenStream.of_words([chrf_words(t) for t in texts]),
                                                    CHRF_WORD_ORDER)
    matches, totals = np.concatenate([char_matches, word_matches]), np.concatenate([char_totals, word_totals])
    ref = np.broadcast_to(totals[:, None, :], matches.shape)
    hyp = np.where(ref > 0, totals[:, :, None], 0.0)  # sacrebleu: no hypothesis n-grams where the reference has none
    effective = (hyp > 0) & (ref > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(effective, matches / hyp, 0.0).sum(0)
        recall = np.where(effective, matches / ref, 0.0).sum(0)
    orders = np.maximum(effective.sum(0), 1)
    precision, recall = precision / orders, recall / orders
    factor = CHRF_BETA ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        f = (1 + factor) * precision * recall / (factor * precision + recall)
    return np.where(precision + recall > 0, 100.0 * f, 0.0)


def utility_matrix(texts: list[str], utility: str, tokenize: str = "13a") -> np.ndarray:
    """The pairwise utility of ``texts`` (``bleu`` or ``chrf``), hypothesis by row."""
    if utility == "bleu":
        return bleu_matrix(texts, tokenize)
    if utility == "chrf":
        return chrf_matrix(texts)
    raise ValueError(f"unknown MBR utility {utility!r}; use bleu or chrf")


def mbr_scores(candidates: list[str], generator_scores: list[float] | None, utility: str,
               temperature: float | None, tokenize: str = "13a", references: list[str] | None = None,
               anchors: list[str] = (), anchor_weight: float = 0.0) -> list[float]:
    """Each candidate's expected utility against the pseudo-references.

    Without ``references`` they are the example's candidates, each text once (a candidate the
    beam returned twice counts once), weighted by ``softmax(generator_scores / temperature)``
    (the generator's length-normalised log-probabilities), or uniformly where ``temperature``
    is None. With ``references`` (samples: draws from the generator already), each reference
    weighs the same, a text drawn twice twice.

    ``anchors`` (the retrieved memory's texts; empty ones are ignored) join the
    pseudo-references with ``anchor_weight`` shared among them (a text given twice weighs
    twice), against the others' total of 1, and the sum is divided by ``1 + anchor_weight``:
    an expected utility still. Without anchors, or with a weight of 0, the scores are the
    consensus alone, to the last bit.
    """
    return mbr_score_sets(candidates, generator_scores, utility, [(temperature, anchor_weight)], tokenize, references,
                          anchors)[0]


def mbr_score_sets(candidates: list[str], generator_scores: list[float] | None, utility: str,
                   settings: list[tuple[float | None, float]], tokenize: str = "13a",
                   references: list[str] | None = None, anchors: list[str] = ()) -> list[list[float]]:
    """``mbr_scores`` with each of ``settings``, a (temperature, anchor weight) pair, the
    utilities computed once: each set equals, to the last bit, what ``mbr_scores`` gives with
    that pair alone."""
    anchors = [a for a in anchors if a] if max((w for _, w in settings), default=0.0) > 0 else []
    if references is not None:
        if any(t is not None for t, _ in settings):
            raise ValueError("samples as pseudo-references weigh the same (they are draws from the generator); "
                             "leave the temperature unset")
        pseudo = list(dict.fromkeys([*candidates, *references]))
        row = {text: k for k, text in enumerate(pseudo)}
        weights = {None: np.bincount([row[r] for r in references], minlength=len(pseudo)) / len(references)}
    else:
        pseudo = list(dict.fromkeys(candidates))
        weights = {t: candidate_weights(pseudo, candidates, generator_scores, t) for t in dict.fromkeys(t for t, _ in settings)}
    texts = list(dict.fromkeys([*pseudo, *anchors]))  # the anchors' own texts after the others'
    row = {text: k for k, text in enumerate(texts)}
    rows = [row[c] for c in candidates]
    utilities = utility_matrix(texts, utility, tokenize)
    # row sums over the pseudo-references' columns only: the same additions with anchors or without
    consensus = {t: (utilities[:, :len(pseudo)] * w).sum(1) for t, w in weights.items()}
    if not anchors:
        return [[float(x) for x in consensus[t][rows]] for t, _ in settings]
    anchored = (utilities * (np.bincount([row[a] for a in anchors], minlength=len(texts)) / len(anchors))).sum(1)
    return [[float(x) for x in ((consensus[t] + w * anchored) / (1.0 + w))[rows]] for t, w in settings]


def candidate_weights(texts: list[str], candidates: list[str], generator_scores: list[float] | None,
                      temperature: float | None) -> np.ndarray:
    """Each distinct candidate text's weight as a pseudo-reference (see ``mbr_scores``)."""
    if temperature is None:
        return np.full(len(texts), 1.0 / len(texts))
    if generator_scores is None or len(generator_scores) != len(candidates):
        raise ValueError("weighting MBR by the generator needs one generator score per candidate")
    best = {}
    for text, score in zip(candidates, generator_scores):
        best[text] = max(score, best.get(text, -np.inf))
    logits = np.array([best[t] for t in texts]) / temperature
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()
