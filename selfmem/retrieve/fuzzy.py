"""The fuzzy match score of translation-memory tools: how much of a query a retrieved source shares.

    fuzzy(a, b) = 1 - levenshtein(words(a), words(b)) / max(|words(a)|, |words(b)|)

over the lowercased word tokens BM25 indexes (``analyze``). BM25 ranks hits but says
nothing about whether the best one is close: on the LibreOffice help a top hit with a
fuzzy match under 0.5 holds a few per cent of the reference's n-grams, and a generator
fed such memories learns to spend capacity on noise. Neural fuzzy repair (Bulté and
Tezcan, 2019) gives a memory only from 0.5 up; ``retrieval.min_fuzzy_match`` does the same.
"""

from __future__ import annotations

from selfmem.retrieve.bm25 import analyze


def levenshtein(a: list[str], b: list[str]) -> int:
    """Edit distance (insertions, deletions, substitutions) between two token lists."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, token in enumerate(a, 1):
        current = [i]
        for j, other in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (token != other)))
        previous = current
    return previous[-1]


def fuzzy_match(query: str, source: str) -> float:
    """1 - word edit distance / the longer word count; 1.0 for two texts without words."""
    a, b = analyze(query), analyze(source)
    longest = max(len(a), len(b))
    return 1.0 - levenshtein(a, b) / longest if longest else 1.0

