"""Embedded BM25 that scores exactly as Elasticsearch (Lucene's BM25Similarity) does.

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
    """Build, save, load and query an embedded Lucene-exact BM25 index."""

    def __init__(self, index: LuceneBM25, threads: int | None = None):
        self.index = index
        self.threads = threads  # threads for `search`; None: one per CPU core

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
            scores["num_docs"], topk,
        )
        return [
            [(int(d), float(s)) for d, s in zip(row_ids, row_scores) if d >= 0]
            for row_ids, row_scores in zip(ids, values)
        ]


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


def _worse(score_a, doc_a, score_b, doc_b):
    """Hit a ranks below hit b: a lower score, or the same score and a higher doc id."""
    return score_a < score_b or (score_a == score_b and doc_a > doc_b)


def _top_k_kernel(pointers, flat, exclude_pointers, exclude_flat, data, indices, indptr, num_docs, k):
    """Accumulate each query's scores and keep its k best hits in a min-heap.

    Hits are ordered by score, then by lower doc id, so the selection is exact and
    matches Lucene's order even among ties.
    """
    n = len(pointers) - 1
    out_ids = np.full((n, k), -1, dtype=np.int64)
    out_scores = np.zeros((n, k), dtype=np.float32)
    scores = np.zeros(num_docs, dtype=np.float32)
    touched = np.empty(num_docs, dtype=np.int64)  # docs with a score, so only they are visited and reset
    heap = np.empty(k, dtype=np.int64)  # doc ids; heap[0] is the worst kept hit
    for q in range(n):
        num_touched = 0
        for i in range(pointers[q], pointers[q + 1]):
            t = flat[i]
            for j in range(indptr[t], indptr[t + 1]):
                d = indices[j]
                if scores[d] == 0:
                    touched[num_touched] = d
                    num_touched += 1
                scores[d] += data[j]
        for e in range(exclude_pointers[q], exclude_pointers[q + 1]):
            scores[exclude_flat[e]] = 0.0
        size = 0
        for m in range(num_touched):
            d = touched[m]
            s = scores[d]
            if s <= 0:
                continue
            if size < k:
                pos = size
                size += 1
                while pos > 0 and _worse(s, d, scores[heap[(pos - 1) // 2]], heap[(pos - 1) // 2]):
                    heap[pos] = heap[(pos - 1) // 2]
                    pos = (pos - 1) // 2
                heap[pos] = d
            elif _worse(scores[heap[0]], heap[0], s, d):
                pos = 0
                while True:
                    child = 2 * pos + 1
                    if child >= size:
                        break
                    if child + 1 < size and _worse(scores[heap[child + 1]], heap[child + 1], scores[heap[child]], heap[child]):
                        child += 1
                    if _worse(scores[heap[child]], heap[child], s, d):
                        heap[pos] = heap[child]
                        pos = child
                    else:
                        break
                heap[pos] = d
        # best first: selection sort of the k kept hits
        for r in range(size):
            best = r
            for c in range(r + 1, size):
                if _worse(scores[heap[best]], heap[best], scores[heap[c]], heap[c]):
                    best = c
            heap[r], heap[best] = heap[best], heap[r]
            out_ids[q, r] = heap[r]
            out_scores[q, r] = scores[heap[r]]
        for m in range(num_touched):
            scores[touched[m]] = 0.0
    return out_ids, out_scores


if numba is not None:
    _worse = numba.njit(inline="always")(_worse)
    _top_k_jit = numba.njit(nogil=True, cache=True)(_top_k_kernel)


def _top_k(*args):
    return _top_k_numpy(*args) if numba is None else _top_k_jit(*args)
