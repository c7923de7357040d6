"""Embedded BM25 that scores as Elasticsearch (Lucene's BM25Similarity) does, up to float rounding.

The index is a ``bm25s`` index (its CSC score matrix, vocabulary and on-disk format)
whose scores are computed with Lucene's formula, including the detail that makes
Elasticsearch's scores differ from textbook BM25: Lucene stores a document's length
in one byte (``SmallFloat.intToByte4``), so lengths of 24 tokens and more are rounded
down to four significant bits before they enter the length normalisation.

    score(q, d) = sum over query tokens t (repeats count) of
                  idf(t) * tf / (tf + k1 * (1 - b + b * L(d) / avgdl))
    idf(t)      = ln(1 + (N - df + 0.5) / (df + 0.5))

N counts documents with at least one token; avgdl is their mean length. Hits are
ordered by score, ties by document id (Elasticsearch's order on a one-shard index);
documents that share no token with the query are never returned.

Rounding: each (token, document) term is computed in float64 and rounded to float32, and a
query's terms are summed in float32 in query order; Lucene computes each term in float32
(as ``w - w / (1 + tf * (1 / norm))``) and sums them in double. The scores agree to a few float32
ulps, so documents whose scores tie or nearly tie may come in another order than
Elasticsearch's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# bm25s probes JAX at import when it is installed, and JAX then claims 75% of every
# GPU's memory for itself; this project never uses bm25s' JAX backend.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import bm25s  # noqa: E402
import numpy as np  # noqa: E402

from selfmem.common.distributed import shard_range
from selfmem.common.io import atomic_directory

try:
    import numba
except ImportError:  # the `fast` extra; without it a numpy loop does the same work
    numba = None

# A word token as Unicode text segmentation (Elasticsearch's standard tokenizer) mostly
# sees it: letters/digits/underscores, joined across ' . ’ inside a word ("don't", "e.g",
# "3.14") and across , ; between digits ("1,000").
WORD_PATTERN = re.compile(r"\w+(?:(?:['’.]|(?<=\d)[,;](?=\d))\w+)*")

Hits = list[tuple[int, float]]


def analyze(text: str) -> list[str]:
    """Lowercased word tokens, no stemming, no stopwords."""
    return WORD_PATTERN.findall(text.lower())


def lucene_length(num_tokens: np.ndarray) -> np.ndarray:
    """Document lengths as Lucene decodes them from its one-byte norm (exact below 24)."""
    lengths = np.asarray(num_tokens, dtype=np.int64)
    rest = np.maximum(lengths - 24, 0)
    # keep the four most significant bits of (length - 24)
    shift = np.maximum(np.floor(np.log2(np.maximum(rest, 1))).astype(np.int64) - 3, 0)
    rounded = 24 + ((rest >> shift) << shift)
    return np.where(lengths < 24, lengths, rounded)


class LuceneBM25(bm25s.BM25):
    """A ``bm25s.BM25`` whose index holds Lucene's scores (see the module docstring)."""

    def __init__(self, k1: float = 1.2, b: float = 0.75, **kwargs):
        kwargs["method"] = "lucene"  # also when `load` passes the saved parameters back
        kwargs.setdefault("backend", "numpy")  # retrieval is ours: see `_top_k`
        super().__init__(k1=k1, b=b, **kwargs)

    def build_index_from_ids(self, unique_token_ids, corpus_token_ids, show_progress=True, leave_progress=False):
        """Override of bm25s' hook: the CSC score matrix (columns = tokens) with Lucene's norms."""
        num_docs, num_terms = len(corpus_token_ids), len(unique_token_ids)
        lengths = np.fromiter((len(doc) for doc in corpus_token_ids), dtype=np.int64, count=num_docs)
        doc_of_token = np.repeat(np.arange(num_docs, dtype=np.int64), lengths)
        flat_terms = np.fromiter((t for doc in corpus_token_ids for t in doc), dtype=np.int64, count=int(lengths.sum()))
        # one entry per (term, doc) pair, sorted by term then doc: the CSC layout
        pairs, tf = np.unique(flat_terms * num_docs + doc_of_token, return_counts=True)
        terms, docs = pairs // num_docs, pairs % num_docs
        df = np.bincount(terms, minlength=num_terms)

        docs_with_tokens = max(int(np.count_nonzero(lengths)), 1)
        avgdl = float(np.float32(lengths.sum() / docs_with_tokens))
        idf = np.log1p((docs_with_tokens - df + 0.5) / (df + 0.5)).astype(np.float32)
        norm = (self.k1 * ((1 - self.b) + self.b * lucene_length(lengths) / avgdl)).astype(np.float32)
        scores = idf[terms] * (tf / (tf + norm[docs]))

        indptr = np.concatenate([[0], np.cumsum(df)])
        self.nonoccurrence_array = None  # only BM25L and BM25+ have one
        return {
            "data": scores.astype(np.float32),
            "indices": docs.astype(np.int32),
            "indptr": indptr.astype(np.int32),
            "num_docs": num_docs,
        }


class BM25Retriever:
    """Build, save, load and query an embedded BM25 index with Lucene's scoring."""

    def __init__(self, index: LuceneBM25, threads: int | None = None):
        self.index = index
        self.threads = threads  # threads for `search`; None: one per CPU core
        # queries of at least this many tokens are searched with dynamic pruning, the others
        # exhaustively (NEVER: all exhaustively, as benchmarks and tests compare); same hits
        self.prune_from = PRUNE_FROM
        self._term_max: np.ndarray | None = None  # each term's largest score, on the first search

    @classmethod
    def build(
        cls, documents: Sequence[str], k1: float = 1.2, b: float = 0.75, threads: int | None = None
    ) -> "BM25Retriever":
        """Index ``documents``; a document's id is its position."""
        index = LuceneBM25(k1=k1, b=b)
        index.index([analyze(doc) for doc in documents], create_empty_token=False, show_progress=False)
        return cls(index, threads)

    def save(self, directory: str | Path) -> None:
        """Write the index to ``directory``, replacing it as one unit: a crash leaves the old
        index or the new one, never a half index or none."""
        with atomic_directory(directory) as staging:
            self.index.save(str(staging), show_progress=False)

    @classmethod
    def load(cls, directory: str | Path, threads: int | None = None) -> "BM25Retriever":
        """The retriever whose index ``save`` wrote into ``directory``."""
        index = LuceneBM25.load(str(directory), show_progress=False, verbosity=0)
        return cls(index, threads)

    def search(self, queries: Sequence[str], topk: int, exclude: Sequence[Sequence[int]] | None = None) -> list[Hits]:
        """The ``topk`` best (doc id, score) hits of each query.

        ``exclude[i]``, when given, lists the documents query i must not retrieve (a train
        example's own pair and its exact duplicates).
        """
        if exclude is not None and len(exclude) != len(queries):
            raise ValueError(f"exclude has {len(exclude)} entries for {len(queries)} queries")
        vocab = self.index.vocab_dict
        token_ids = [[vocab[t] for t in analyze(q) if t in vocab] for q in queries]
        excluded = [()] * len(queries) if exclude is None else exclude
        if self._term_max is None:  # before the threads, which share it
            self._term_max = term_max_scores(self.index.scores)
        # the kernel releases the GIL: one contiguous block of queries per thread
        threads = max(1, min(self.threads or os.cpu_count() or 1, len(queries)))
        blocks = [shard_range(len(queries), i, threads) for i in range(threads)]
        blocks = [(token_ids[b.start : b.stop], excluded[b.start : b.stop], topk) for b in blocks]
        with ThreadPoolExecutor(threads) as pool:
            return [hits for block in pool.map(lambda args: self._search_block(*args), blocks) for hits in block]

    def _search_block(self, token_ids: list[list[int]], exclude: Sequence[Sequence[int]], topk: int) -> list[Hits]:
        pointers, flat = ragged(token_ids)
        exclude_pointers, exclude_flat = ragged(exclude)
        scores = self.index.scores
        ids, values = _top_k(
            pointers, flat, exclude_pointers, exclude_flat, scores["data"], scores["indices"], scores["indptr"],
            scores["num_docs"], topk, self._term_max, self.prune_from,
        )
        return [
            [(int(d), float(s)) for d, s in zip(row_ids, row_scores) if d >= 0]
            for row_ids, row_scores in zip(ids, values)
        ]


def term_max_scores(scores: dict) -> np.ndarray:
    """Each term's largest score (float32), the bound that pruning starts from.

    Pruning also needs each posting list sorted by doc id, as `build_index_from_ids` writes
    it (np.unique sorts by term, then doc); a matrix that is not is sorted here, in place.
    """
    data, indices, indptr = scores["data"], scores["indices"], scores["indptr"]
    rising = np.diff(indices.astype(np.int64)) > 0
    inner = indptr[1:-1]
    rising[inner[(inner > 0) & (inner < len(indices))] - 1] = True  # a term's last posting vs the next term's first
    lengths = np.diff(indptr)
    if not rising.all():
        order = np.lexsort((indices, np.repeat(np.arange(len(lengths)), lengths)))
        scores["data"], scores["indices"] = data[order], indices[order]
        data = scores["data"]
    term_max = np.zeros(len(lengths), dtype=np.float32)
    present = lengths > 0  # reduceat would give an empty term its next term's first score
    term_max[present] = np.maximum.reduceat(data, indptr[:-1][present])
    return term_max


def ragged(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Lists of ints as the kernel reads them: row i is ``flat[pointers[i]:pointers[i + 1]]``."""
    pointers = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(row) for row in rows], out=pointers[1:])
    return pointers, np.fromiter((x for row in rows for x in row), dtype=np.int64, count=int(pointers[-1]))


def _top_k_numpy(pointers, flat, exclude_pointers, exclude_flat, data, indices, indptr, num_docs, k):
    """Reference path, used without numba; same float32 sums in the same order as the kernel."""
    n = len(pointers) - 1
    out_ids = np.full((n, k), -1, dtype=np.int64)
    out_scores = np.zeros((n, k), dtype=np.float32)
    doc_keys = 0xFFFFFFFF - np.arange(num_docs, dtype=np.int64)
    for q in range(n):
        scores = np.zeros(num_docs, dtype=np.float32)
        for t in flat[pointers[q] : pointers[q + 1]]:
            start, end = indptr[t], indptr[t + 1]
            scores[indices[start:end]] += data[start:end]  # a posting list holds each doc once
        scores[exclude_flat[exclude_pointers[q] : exclude_pointers[q + 1]]] = 0.0
        hit = np.flatnonzero(scores > 0)
        keys = (scores[hit].view(np.uint32).astype(np.int64) << 32) | doc_keys[hit]
        best = np.sort(keys if len(keys) <= k else np.partition(keys, len(keys) - k)[-k:])[::-1]
        out_ids[q, : len(best)] = 0xFFFFFFFF - (best & 0xFFFFFFFF)
        out_scores[q, : len(best)] = (best >> 32).astype(np.uint32).view(np.float32)
    return out_ids, out_scores


# Documents per window of the pruned search: small enough that the k-th best score rises
# (and terms turn non-essential) early in the doc-id range, large enough that a window's
# fixed cost (a few steps per distinct query term) stays small. Measured on debian_sum,
# 1,024 to 2,048 are best (4,096: 10% slower).
WINDOW = 2048
# A non-essential term is looked up for a window's candidates by spreading its postings in
# the window over a dense array when it has fewer than DENSE times as many postings there
# (estimated) as there are candidates left, else by galloping to each candidate: a posting
# spread costs a fraction of a gallop, which waits on scattered loads.
DENSE = 4
# Queries with fewer tokens are scored exhaustively: a lone term's bound is at least every
# score, so nothing can be pruned. Measured, pruning pays from 2 tokens on (LibreOffice
# sentences: 1.9x with every query pruned, 1.8x from 8 tokens on).
PRUNE_FROM = 2
NEVER = np.iinfo(np.int64).max  # as prune_from: every query exhaustive
# Postings of a query's rarest terms summed before the first window: the best hits most
# likely share those terms, so the k-th best of these partial sums starts the floor high.
SEED_POSTINGS = 1024


def _worse(score_a, doc_a, score_b, doc_b):
    """Hit a ranks below hit b: a lower score, or the same score and a higher doc id."""
    return score_a < score_b or (score_a == score_b and doc_a > doc_b)


def _offer(heap_ids, heap_scores, size, k, score, doc):
    """Offer hit (score, doc) to the min-heap of the k best hits so far (heap[0] is the worst
    kept); return the heap's new size."""
    if size < k:
        pos = size
        size += 1
        while pos > 0 and _worse(score, doc, heap_scores[(pos - 1) // 2], heap_ids[(pos - 1) // 2]):
            heap_ids[pos], heap_scores[pos] = heap_ids[(pos - 1) // 2], heap_scores[(pos - 1) // 2]
            pos = (pos - 1) // 2
    elif _worse(heap_scores[0], heap_ids[0], score, doc):
        pos = 0
        while True:
            child = 2 * pos + 1
            if child >= size:
                break
            if child + 1 < size and _worse(heap_scores[child + 1], heap_ids[child + 1], heap_scores[child], heap_ids[child]):
                child += 1
            if not _worse(heap_scores[child], heap_ids[child], score, doc):
                break
            heap_ids[pos], heap_scores[pos] = heap_ids[child], heap_scores[child]
            pos = child
    else:
        return size
    heap_ids[pos], heap_scores[pos] = doc, score
    return size


def _exhaustive_query(tokens, excluded, data, indices, indptr, k, scores, touched, heap_ids, heap_scores):
    """Sum every posting of every query token, then heap the k best; return the heap's size.

    ``scores`` is all zeros on entry and again on return (only touched docs are reset).
    """
    num_touched = 0
    for t in tokens:
        for j in range(indptr[t], indptr[t + 1]):
            d = indices[j]
            if scores[d] == 0:
                touched[num_touched] = d
                num_touched += 1
            scores[d] += data[j]
    for d in excluded:
        scores[d] = 0.0
    size = 0
    for m in range(num_touched):
        d = touched[m]
        if scores[d] > 0:
            size = _offer(heap_ids, heap_scores, size, k, scores[d], d)
        scores[d] = 0.0
    return size


def _gallop(indices, pos, end, doc):
    """The first posting in [pos, end) whose doc id is >= ``doc`` (``end`` if none): steps
    doubling from ``pos``, then a binary search, so short hops forward stay cheap."""
    if pos >= end or indices[pos] >= doc:
        return pos
    low, high, step = pos, pos + 1, 1  # indices[low] < doc throughout
    while high < end and indices[high] < doc:
        low = high
        step *= 2
        high = low + step
    high = min(high, end)
    while high - low > 1:
        mid = (low + high) // 2
        if indices[mid] < doc:
            low = mid
        else:
            high = mid
    return high


def _exact_score(indices, data, cursors, ends, slot, weights, doc):
    """The float32 score of ``doc`` as `_exhaustive_query` sums it: its score in each distinct
    term (postings [cursors[u], ends[u])), added in the query's token order (``slot``).
    Moves each cursor to the term's first posting >= ``doc``, so rising docs gallop on."""
    for u in range(len(weights)):
        p = _gallop(indices, cursors[u], ends[u], doc)
        cursors[u] = p
        weights[u] = data[p] if p < ends[u] and indices[p] == doc else np.float32(0.0)
    score = np.float32(0.0)
    for i in range(len(slot)):  # adding 0 for an absent term changes no float32 sum
        score += weights[slot[i]]
    return score


def _seed_floor(terms, lengths, counts, data, indices, starts, k, excluded_docs, partial, slack):
    """A floor under the k-th best score before any window: the k-th best sum of the rarest
    terms' postings (terms from the last, up to `SEED_POSTINGS` postings), or -1.

    A doc's float32 score is at least its real sum over all its terms divided by ``slack``,
    so the k-th best of these partial sums, so divided, is at most the k-th best score.
    """
    docs = np.empty(SEED_POSTINGS, np.int64)
    num_docs, budget = 0, SEED_POSTINGS
    for u in range(len(terms) - 1, -1, -1):
        if lengths[u] > budget:
            break
        budget -= lengths[u]
        for p in range(starts[u], starts[u] + lengths[u]):
            d = indices[p]
            if partial[d] == 0:
                docs[num_docs] = d
                num_docs += 1
            partial[d] += counts[u] * data[p]
    sums = partial[docs[:num_docs]]
    partial[docs[:num_docs]] = 0.0
    sums = sums[~excluded_docs[docs[:num_docs]]]
    if len(sums) < k:
        return -1.0
    return np.partition(sums, len(sums) - k)[len(sums) - k] / slack


def _candidates(acc, rest, slack, floor, cand, bound):
    """Compact the window's docs that an essential term touched and whose bound, every
    non-essential bound added (``rest``), reaches ``floor``: their slots into ``cand``, their
    essential sums into ``bound``; zero ``acc``; return how many. No branch per slot."""
    n = 0
    for j in range(len(acc)):
        a = acc[j]
        acc[j] = 0.0
        cand[n] = j
        bound[n] = a
        n += (a > 0.0) & ((a + rest) * slack >= floor)
    return n


def _spread(indices, data, pos, end, lo, hi, dense):
    """Write the postings of one term in the window [lo, hi) into ``dense`` (by slot), from
    ``pos`` (no earlier posting in the window); return the first posting past the window."""
    while pos < end and indices[pos] < hi:
        dense[indices[pos] - lo] = data[pos]
        pos += 1
    return pos


def _gallop_to_each(indices, data, pos, end, lo, cand, num_left, dense):
    """Write into ``dense`` (by slot) the score of one term in each of the first ``num_left``
    candidates (slots past ``lo``, rising), galloping from ``pos``; return the cursor."""
    for c in range(num_left):
        d = lo + cand[c]
        pos = _gallop(indices, pos, end, d)
        if pos < end and indices[pos] == d:
            dense[cand[c]] = data[pos]
    return pos


def _keep(cand, bound, num_left, count, dense, rest, slack, floor):
    """Add each candidate's score in one term (``count`` times ``dense[slot]``, then zeroed) to
    its bound and keep, compacted, those whose bound plus ``rest`` still reaches ``floor``."""
    m = 0
    for c in range(num_left):
        j = cand[c]
        b = bound[c] + count * dense[j]
        dense[j] = 0.0
        cand[m] = j
        bound[m] = b
        m += (b + rest) * slack >= floor
    return m


def _pruned_query(tokens, excluded, data, indices, indptr, term_max, k, excluded_docs, partial, heap_ids, heap_scores,
                  acc, dense, cand, bound):
    """The same k best hits as `_exhaustive_query`, skipping docs that cannot enter them
    (MaxScore, as Lucene's MaxScoreBulkScorer); return the heap's size.

    A distinct term's bound is its count in the query times its largest score. Once k hits
    are kept, terms whose bounds add up to less than the k-th best score are non-essential:
    a doc that has none of the other (essential) terms cannot enter. Docs are visited a
    window of ``len(acc)`` doc ids at a time: the essential terms' postings in the window are
    summed per doc (float64, for the bound only); the docs whose bound, with every
    non-essential bound added, reaches the k-th score are the window's candidates; then each
    non-essential term, largest bound first, adds its scores to the candidates left (spread
    out or galloped to, whichever is cheaper) and drops those that can no longer reach it.
    A doc that survives gets its exact score, the float32 sum in query token order that
    `_exhaustive_query` computes. ``excluded_docs``, ``partial``, ``acc`` and ``dense`` are
    all False and zeros on entry and again on return; ``cand`` and ``bound`` are scratch.
    """
    terms = np.unique(tokens)
    slot = np.searchsorted(terms, tokens)  # each token's distinct term
    counts = np.bincount(slot, minlength=len(terms)).astype(np.float64)
    bounds = counts * term_max[terms]
    # Terms turn non-essential in this order: most postings skipped per unit of bound first
    # (a greedy knapsack under the k-th score), so that the essential terms are rare ones.
    order = np.argsort(-(indptr[terms + 1] - indptr[terms]) / bounds)
    rank = np.empty(len(terms), np.int64)
    rank[order] = np.arange(len(terms))
    slot, terms, counts, bounds = rank[slot], terms[order], counts[order], bounds[order]
    num_terms = len(terms)
    below = np.zeros(num_terms + 1)  # below[i]: bounds of the first i terms together
    for i in range(num_terms):
        below[i + 1] = below[i] + bounds[i]
    # A float32 sum of n positive numbers exceeds their real sum by a factor below
    # 1 + (n - 1) 2^-23; 2 more steps cover the float64 sums here: with this slack a doc
    # is pruned only when its exact float32 score is certainly below the k-th best.
    slack = 1.0 + (len(tokens) + 2) * 2.0**-23
    pos = indptr[terms].astype(np.int64)  # each term's cursor: no posting before it is needed
    end = indptr[terms + 1].astype(np.int64)
    cursors = np.empty(num_terms, np.int64)  # the exact scores' cursors in a window
    weights = np.zeros(num_terms, np.float32)
    lookups = np.arange(0)  # the non-essential terms, largest bound first
    rest = np.zeros(1)  # rest[i]: bounds of lookups[i:] together
    num_docs = len(excluded_docs)
    excluded_docs[excluded] = True
    size = 0
    floor = _seed_floor(terms, end - pos, counts, data, indices, pos, k, excluded_docs, partial, slack)
    lazy = 0  # terms [0, lazy) are non-essential
    while True:
        # floor only rises, so terms only turn non-essential; checked between windows, as a
        # window's sums hold exactly the essential terms it started with
        if lazy < num_terms and below[lazy + 1] * slack < floor:
            while lazy < num_terms and below[lazy + 1] * slack < floor:
                lazy += 1
            lookups = np.argsort(-bounds[:lazy])
            rest = np.zeros(lazy + 1)
            for i in range(lazy - 1, -1, -1):
                rest[i] = rest[i + 1] + bounds[lookups[i]]
        lo = NEVER  # the window starts at the next doc of an essential term
        for u in range(lazy, num_terms):
            if pos[u] < end[u] and indices[pos[u]] < lo:
                lo = indices[pos[u]]
        if lo == NEVER:
            break
        hi = lo + len(acc)
        cursors[:] = pos  # no posting of the window is before them
        for u in range(lazy, num_terms):
            p, count = pos[u], counts[u]
            while p < end[u] and indices[p] < hi:
                acc[indices[p] - lo] += count * data[p]
                p += 1
            pos[u] = p
        n = _candidates(acc, rest[0], slack, floor, cand, bound)
        for i in range(lazy):
            if n == 0:
                break
            u = lookups[i]
            # the term's postings in the window, estimated from those left over the docs left
            if (end[u] - pos[u]) * len(acc) < DENSE * n * (num_docs - lo):
                first = _gallop(indices, pos[u], end[u], lo)  # a looked-up term's cursor may lag
                pos[u] = _spread(indices, data, first, end[u], lo, hi, dense)
                n = _keep(cand, bound, n, counts[u], dense, rest[i + 1], slack, floor)
                for p in range(first, pos[u]):  # the spread postings of docs no longer candidates
                    dense[indices[p] - lo] = 0.0
            else:
                pos[u] = _gallop_to_each(indices, data, pos[u], end[u], lo, cand, n, dense)
                n = _keep(cand, bound, n, counts[u], dense, rest[i + 1], slack, floor)
        for c in range(n):  # in doc order, so that the exact scores' cursors only move forward
            d = lo + cand[c]
            if excluded_docs[d]:
                continue
            size = _offer(heap_ids, heap_scores, size, k, _exact_score(indices, data, cursors, end, slot, weights, d), d)
            if size == k:
                floor = max(floor, heap_scores[0])
    excluded_docs[excluded] = False
    return size


def _write_best_first(heap_ids, heap_scores, size, out_ids, out_scores):
    """Write the kept hits best first (a selection sort: k is small)."""
    for r in range(size):
        best = r
        for c in range(r + 1, size):
            if _worse(heap_scores[best], heap_ids[best], heap_scores[c], heap_ids[c]):
                best = c
        heap_ids[r], heap_ids[best] = heap_ids[best], heap_ids[r]
        heap_scores[r], heap_scores[best] = heap_scores[best], heap_scores[r]
        out_ids[r], out_scores[r] = heap_ids[r], heap_scores[r]


def _top_k_kernel(pointers, flat, exclude_pointers, exclude_flat, data, indices, indptr, num_docs, k, term_max,
                  prune_from):
    """Each query's k best hits, ordered by score, then by lower doc id (Lucene's order, so
    the selection is exact even among ties).

    Queries of at least ``prune_from`` tokens skip hopeless docs (`_pruned_query`, with
    ``term_max`` each term's largest score); the others score every posting
    (`_exhaustive_query`). Both give the same ids and float32 scores.
    """
    n = len(pointers) - 1
    out_ids = np.full((n, k), -1, dtype=np.int64)
    out_scores = np.zeros((n, k), dtype=np.float32)
    if k == 0:
        return out_ids, out_scores
    scores = np.zeros(num_docs, dtype=np.float32)
    touched = np.empty(num_docs, dtype=np.int64)  # docs with a score, so only they are visited and reset
    excluded_docs = np.zeros(num_docs, dtype=np.bool_)
    partial = np.zeros(num_docs, dtype=np.float64)
    acc = np.zeros(WINDOW, dtype=np.float64)
    dense = np.zeros(WINDOW, dtype=np.float32)
    cand = np.empty(WINDOW, dtype=np.int64)
    bound = np.empty(WINDOW, dtype=np.float64)
    heap_ids = np.empty(k, dtype=np.int64)
    heap_scores = np.empty(k, dtype=np.float32)
    for q in range(n):
        tokens = flat[pointers[q] : pointers[q + 1]]
        excluded = exclude_flat[exclude_pointers[q] : exclude_pointers[q + 1]]
        if len(tokens) >= prune_from:
            size = _pruned_query(tokens, excluded, data, indices, indptr, term_max, k, excluded_docs, partial,
                                 heap_ids, heap_scores, acc, dense, cand, bound)
        else:
            size = _exhaustive_query(tokens, excluded, data, indices, indptr, k, scores, touched, heap_ids, heap_scores)
        _write_best_first(heap_ids, heap_scores, size, out_ids[q], out_scores[q])
    return out_ids, out_scores


if numba is not None:
    _worse = numba.njit(inline="always")(_worse)
    (_offer, _exhaustive_query, _gallop, _exact_score, _seed_floor, _candidates, _spread, _gallop_to_each, _keep,
     _pruned_query, _write_best_first) = (
        numba.njit(cache=True)(f)
        for f in (_offer, _exhaustive_query, _gallop, _exact_score, _seed_floor, _candidates, _spread, _gallop_to_each,
                  _keep, _pruned_query, _write_best_first)
    )
    _top_k_jit = numba.njit(nogil=True, cache=True)(_top_k_kernel)


def _top_k(pointers, flat, exclude_pointers, exclude_flat, data, indices, indptr, num_docs, k, term_max, prune_from):
    """The numba kernel, or without numba the numpy reference (exhaustive, same results)."""
    if numba is None:
        return _top_k_numpy(pointers, flat, exclude_pointers, exclude_flat, data, indices, indptr, num_docs, k)
    return _top_k_jit(pointers, flat, exclude_pointers, exclude_flat, data, indices, indptr, num_docs, k, term_max,
                      prune_from)
