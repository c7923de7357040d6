"""The embedded BM25 against a brute-force implementation of Lucene's BM25Similarity."""

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import DEMO_DATA
from selfmem.retrieve import bm25
from selfmem.retrieve.bm25 import BM25Retriever, analyze, lucene_length

K1, B = 1.2, 0.75


def read_field(path, field, n):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)[field] for _, line in zip(range(n), f)]


# --- Lucene's SmallFloat, ported line by line from org.apache.lucene.util.SmallFloat ---
def long_to_int4(i):
    num_bits = i.bit_length()
    if num_bits < 4:
        return i
    shift = num_bits - 4
    encoded = (i >> shift) & 0x07
    return encoded | ((shift + 1) << 3)


def int4_to_long(i):
    bits = i & 0x07
    shift = (i >> 3) - 1
    return bits if shift == -1 else (bits | 0x08) << shift


NUM_FREE_VALUES = 255 - long_to_int4(2**31 - 1)  # 24


def int_to_byte4(i):
    return i if i < NUM_FREE_VALUES else NUM_FREE_VALUES + long_to_int4(i - NUM_FREE_VALUES)


def byte4_to_int(b):
    return b if b < NUM_FREE_VALUES else NUM_FREE_VALUES + int4_to_long(b - NUM_FREE_VALUES)


def brute_force(documents, query, k1=K1, b=B):
    """Lucene BM25Similarity, one document at a time: {doc id: score} of matching docs."""
    docs = [analyze(d) for d in documents]
    n = sum(1 for d in docs if d)
    avgdl = sum(len(d) for d in docs) / n
    df = Counter(t for d in docs for t in set(d))
    scores = {}
    for doc_id, tokens in enumerate(docs):
        tf = Counter(tokens)
        length = byte4_to_int(int_to_byte4(len(tokens)))
        score = 0.0
        for term in analyze(query):
            if tf[term]:
                idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
                score += idf * tf[term] / (tf[term] + k1 * (1 - b + b * length / avgdl))
        if score > 0:
            scores[doc_id] = score
    return scores


def assert_hits_match(hits, expected, topk, exclude=()):
    """Our hits are the brute-force top-k (score desc, id asc) of the documents not in
    ``exclude``, up to float32 near-ties."""
    expected = {d: s for d, s in expected.items() if d not in exclude}
    ranked = sorted(expected.items(), key=lambda kv: (-kv[1], kv[0]))[:topk]
    assert len(hits) == len(ranked)
    for (doc, score), (want_doc, want_score) in zip(hits, ranked):
        assert score == pytest.approx(want_score, abs=1e-4)
        # a different id is only acceptable when both documents score the same
        assert doc == want_doc or abs(expected[doc] - want_score) < 1e-4


def test_lucene_length_equals_smallfloat_round_trip():
    lengths = np.arange(0, 20000)
    assert lucene_length(lengths).tolist() == [byte4_to_int(int_to_byte4(int(n))) for n in lengths]
    # exact below 24, four significant bits of (length - 24) above
    assert lucene_length(np.array([23, 24, 40, 41, 56, 57, 100])).tolist() == [23, 24, 40, 40, 56, 56, 96]


def test_analyze_lowercases_words_without_stemming_or_stopwords():
    text = "The Don't e.g. 3.14 1,000 foo_bar A-B Größe running, the"
    assert analyze(text) == ["the", "don't", "e.g", "3.14", "1,000", "foo_bar", "a", "b", "größe", "running", "the"]
    assert analyze("!= <> ;;") == []


@pytest.fixture(scope="module")
def corpus():
    documents = read_field(DEMO_DATA / "train.jsonl", "src", 400)
    documents.append("!= ;")  # no word token: not counted in N nor avgdl, never retrieved
    queries = read_field(DEMO_DATA / "dev.jsonl", "src", 60)
    return documents, queries, BM25Retriever.build(documents, K1, B)


def test_scores_and_ranking_equal_lucene_formula_on_real_documents(corpus):
    documents, queries, retriever = corpus
    for query, hits in zip(queries, retriever.search(queries, topk=10)):
        assert_hits_match(hits, brute_force(documents, query), topk=10)


def test_train_queries_never_retrieve_themselves(corpus):
    documents, _, retriever = corpus
    queries = documents[:80]
    with_self = retriever.search(queries, topk=5)
    without_self = retriever.search(queries, topk=5, exclude=[[i] for i in range(80)])
    assert sum(hits[0][0] == i for i, hits in enumerate(with_self)) >= 75  # a document is its own best match
    for i, (query, hits) in enumerate(zip(queries, without_self)):
        assert i not in [doc for doc, _ in hits]
        assert_hits_match(hits, brute_force(documents, query), topk=5, exclude=[i])


def test_a_query_excludes_every_document_it_is_given(corpus):
    documents, _, retriever = corpus
    # each of the first 40 documents twice more, as a corpus with duplicated pairs holds them
    repeated = documents + documents[:40] + documents[:40]
    retriever = BM25Retriever.build(repeated, K1, B)
    copies = [[i, len(documents) + i, len(documents) + 40 + i] for i in range(40)]
    for i, (query, hits) in enumerate(zip(documents[:40], retriever.search(documents[:40], topk=5, exclude=copies))):
        assert not set(copies[i]) & {doc for doc, _ in hits}
        assert_hits_match(hits, brute_force(repeated, query), topk=5, exclude=copies[i])
    with pytest.raises(ValueError, match="exclude has 1 entries for 2 queries"):
        retriever.search(documents[:2], topk=5, exclude=[[0]])


def test_ties_are_broken_by_lower_document_id():
    documents = ["red apple", "green pear", "red apple", "Red, apple!", "red apple tree"]
    hits = BM25Retriever.build(documents).search(["red apple"], topk=4)[0]
    assert [doc for doc, _ in hits] == [0, 2, 3, 4]
    assert hits[0][1] == hits[1][1] == hits[2][1] > hits[3][1]


def test_a_repeated_query_token_counts_each_time():
    # Lucene folds duplicate SHOULD clauses of a match query into one with boost 2
    retriever = BM25Retriever.build(["red apple", "green pear", "red pear", "blue sky"])
    [[(doc, single)]], [[(same_doc, double)]] = (retriever.search([q], topk=1) for q in ("apple", "apple apple"))
    assert doc == same_doc == 0
    assert double == pytest.approx(2 * single, rel=1e-6)


def test_queries_without_shared_tokens_get_no_hits(corpus):
    _, _, retriever = corpus
    assert retriever.search(["zzzqqq xxyyzz", "!!!", ""], topk=3) == [[], [], []]


def test_fewer_matching_documents_than_topk():
    hits = BM25Retriever.build(["red apple", "green pear", "blue sky"]).search(["red pear"], topk=5)[0]
    # each matches one word of the same document frequency, in a document of the same length:
    # the scores tie, and a tie goes to the lower id
    assert [doc for doc, _ in hits] == [0, 1]
    assert hits[0][1] == hits[1][1] > 0


def test_saved_index_loads_and_gives_the_same_hits(corpus, tmp_path):
    _, queries, retriever = corpus
    retriever.save(tmp_path / "index")
    retriever.save(tmp_path / "index")  # replacing an existing index
    loaded = BM25Retriever.load(tmp_path / "index")
    assert loaded.search(queries, topk=5) == retriever.search(queries, topk=5)
    assert [p.name for p in tmp_path.iterdir()] == ["index"]  # no temporary left


@pytest.mark.skipif(bm25.numba is None, reason="numba (the `fast` extra) is not installed")
def test_numpy_path_equals_numba_kernel(corpus):
    documents, queries, retriever = corpus
    vocab, scores = retriever.index.vocab_dict, retriever.index.scores
    token_ids = [[vocab[t] for t in analyze(q) if t in vocab] for q in queries + documents[:50]]
    pointers = np.cumsum([0] + [len(t) for t in token_ids]).astype(np.int64)
    flat = np.array([t for ids in token_ids for t in ids], dtype=np.int64)
    exclude_pointers, exclude_flat = bm25.ragged([[]] * len(queries) + [[i, i + 1] for i in range(50)])
    args = (pointers, flat, exclude_pointers, exclude_flat, scores["data"], scores["indices"], scores["indptr"],
            scores["num_docs"], 7)
    ids_np, scores_np = bm25._top_k_numpy(*args)
    term_max = bm25.term_max_scores(scores)
    for prune_from in (bm25.NEVER, 1):  # exhaustive, then every query pruned
        ids_jit, scores_jit = bm25._top_k_jit(*args, term_max, prune_from)
        np.testing.assert_array_equal(ids_np, ids_jit)
        np.testing.assert_array_equal(scores_np, scores_jit)


# --- dynamic pruning (MaxScore): the same ids and float32 scores as the exhaustive kernel ---
FIXTURE = Path(__file__).parent / "fixtures" / "debian_sum"
needs_numba = pytest.mark.skipif(bm25.numba is None, reason="numba (the `fast` extra) is not installed")


def exhaustive_top_k(scores, token_ids, exclude, k):
    """Every query's top k by the exhaustive numba kernel: (ids, float32 scores) rows."""
    pointers, flat = bm25.ragged(token_ids)
    exclude_pointers, exclude_flat = bm25.ragged(exclude)
    return bm25._top_k_jit(pointers, flat, exclude_pointers, exclude_flat, scores["data"], scores["indices"],
                           scores["indptr"], scores["num_docs"], k, bm25.term_max_scores(scores), bm25.NEVER)


def pruned_top_k(scores, tokens, excluded, k, window):
    """One query's top k by the pruned search, with windows of ``window`` docs (small windows
    put ties and cursors across window edges); checks that its scratch arrays come back clean."""
    num_docs = scores["num_docs"]
    excluded_docs, partial = np.zeros(num_docs, np.bool_), np.zeros(num_docs)
    acc, dense = np.zeros(window), np.zeros(window, np.float32)
    cand, bound = np.empty(window, np.int64), np.empty(window)
    heap_ids, heap_scores = np.empty(k, np.int64), np.empty(k, np.float32)
    size = bm25._pruned_query(np.asarray(tokens, np.int64), np.asarray(excluded, np.int64), scores["data"],
                              scores["indices"], scores["indptr"], bm25.term_max_scores(scores), k, excluded_docs,
                              partial, heap_ids, heap_scores, acc, dense, cand, bound)
    assert not excluded_docs.any() and not partial.any() and not acc.any() and not dense.any()
    ids, values = np.full(k, -1, np.int64), np.zeros(k, np.float32)
    bm25._write_best_first(heap_ids, heap_scores, size, ids, values)
    return ids, values


def assert_pruned_equals_exhaustive(retriever, queries, exclude, ks, windows):
    """Ids and float32 scores of the pruned search equal the exhaustive kernel's, bit for bit."""
    vocab, scores = retriever.index.vocab_dict, retriever.index.scores
    token_ids = [[vocab[t] for t in analyze(q) if t in vocab] for q in queries]
    for k in ks:
        want_ids, want_scores = exhaustive_top_k(scores, token_ids, exclude, k)
        for window in windows:
            for q, (tokens, excluded) in enumerate(zip(token_ids, exclude)):
                ids, values = pruned_top_k(scores, tokens, excluded, k, window)
                assert np.array_equal(ids, want_ids[q]), (k, window, q)
                assert np.array_equal(values.view(np.uint32), want_scores[q].view(np.uint32)), (k, window, q)


@needs_numba
def test_pruned_search_equals_exhaustive_on_long_queries():
    # Debian package descriptions as queries (about 50 words), train ones with themselves excluded
    documents = read_field(FIXTURE / "train.jsonl", "document", 300)
    retriever = BM25Retriever.build(documents, K1, B)
    queries = documents + read_field(FIXTURE / "dev.jsonl", "document", 40) + read_field(FIXTURE / "test.jsonl", "document", 40)
    exclude = [[i] for i in range(len(documents))] + [[]] * 80
    # small windows cut posting lists and ties across window edges, and take both ways of
    # looking up a non-essential term (spread over the window, galloped to each candidate),
    # with cursors left windows behind by one way and picked up by the other
    assert_pruned_equals_exhaustive(retriever, queries, exclude, ks=(1, 5, 50), windows=(16, 64, bm25.WINDOW))
    # and through `search`, which prunes queries of PRUNE_FROM tokens or more
    pruned = retriever.search(queries, topk=5, exclude=exclude)
    retriever.prune_from = bm25.NEVER
    assert pruned == retriever.search(queries, topk=5, exclude=exclude)


@needs_numba
def test_pruned_search_equals_exhaustive_on_ties_repeats_and_exclusions():
    # 7 texts repeated over 350 documents: every score is shared by about 50 documents
    texts = ["red apple", "red apple pie", "green apple", "apple apple red", "pie", "red red red green", "blue sky"]
    documents = [texts[i % len(texts)] for i in range(350)]
    retriever = BM25Retriever.build(documents, K1, B)
    queries = ["red apple", "red apple red apple pie", "apple pie green red blue sky", "pie pie pie red",
               "", "zzz unknown", "sky"]
    # each query also excludes the 60 documents it ranks best (all of its best ties and more)
    best = retriever.search(queries, topk=60)
    for exclude in ([[]] * len(queries), [[doc for doc, _ in hits] for hits in best]):
        assert_pruned_equals_exhaustive(retriever, queries, exclude, ks=(1, 5, 37, 1000), windows=(8, 64))
    # k above the number of hits: every matching document, the rest -1
    ids, _ = pruned_top_k(retriever.index.scores, [retriever.index.vocab_dict["sky"]], [], 1000, 8)
    assert (ids >= 0).sum() == 50 and (ids[50:] == -1).all()


@needs_numba
def test_term_max_scores_sorts_unsorted_postings():
    documents = read_field(FIXTURE / "train.jsonl", "document", 100)
    scores = BM25Retriever.build(documents).index.scores
    data, indices, indptr = scores["data"], scores["indices"], scores["indptr"]
    want = np.array([data[a:b].max() for a, b in zip(indptr[:-1], indptr[1:])], dtype=np.float32)
    shuffled = dict(scores)
    order = np.arange(len(data))
    for a, b in zip(indptr[:-1], indptr[1:]):  # reverse each posting list
        order[a:b] = order[a:b][::-1]
    shuffled["data"], shuffled["indices"] = data[order], indices[order]
    assert np.array_equal(bm25.term_max_scores(scores), want)
    assert np.array_equal(bm25.term_max_scores(shuffled), want)
    assert np.array_equal(shuffled["indices"], indices) and np.array_equal(shuffled["data"], data)
