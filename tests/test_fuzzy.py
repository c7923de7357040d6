"""The fuzzy match score: word edit distance against its recursive definition, and known scores."""

import random
from functools import lru_cache

from selfmem.retrieve.fuzzy import fuzzy_match, levenshtein


def reference_levenshtein(a: list[str], b: list[str]) -> int:
    """The textbook recursion, memoized."""
    @lru_cache(maxsize=None)
    def distance(i: int, j: int) -> int:
        if i == 0 or j == 0:
            return i + j
        return min(distance(i - 1, j) + 1, distance(i, j - 1) + 1, distance(i - 1, j - 1) + (a[i - 1] != b[j - 1]))

    return distance(len(a), len(b))


def test_levenshtein_equals_the_recursive_definition():
    rng = random.Random(0)
    for _ in range(500):
        a = rng.choices("abcd", k=rng.randint(0, 9))
        b = rng.choices("abcd", k=rng.randint(0, 9))
        assert levenshtein(a, b) == reference_levenshtein(a, b) == levenshtein(b, a)


def test_known_distances():
    assert levenshtein(list("kitten"), list("sitting")) == 3
    assert levenshtein([], ["a", "b"]) == 2


def test_fuzzy_match_scores_words_of_the_bm25_analyzer():
    # case and punctuation are not words: [choose, format, cells] against [choose, format, rows]
    assert fuzzy_match("Choose Format - Cells.", "choose format rows") == 1 - 1 / 3
    assert fuzzy_match("Opens the Print dialog.", "Opens the Print dialog") == 1.0
    # one substitution and one insertion over the longer text's 5 words
    assert fuzzy_match("Select the cell range", "Select the whole table range") == 1 - 2 / 5
    assert fuzzy_match("abc", "xyz") == 0.0
    assert fuzzy_match("- .", "!") == 1.0  # no words on either side
