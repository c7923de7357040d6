import base64
import json
import logging
import os
import re
import threading
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

import pytest
from elastic_transport import ApiResponseMeta, BaseNode, HttpHeaders
from elasticsearch import Elasticsearch

from conftest import free_port
from selfmem.common.config import ConfigError, load_config
from selfmem.common.data import Example
from selfmem.common.distributed import DistEnv
from selfmem.common.run import RunPaths
from selfmem.retrieve import elastic
from selfmem.retrieve.bm25 import BM25Retriever
from selfmem.retrieve.memory import memory_lines, open_retriever
from selfmem.retrieve.elastic import (
    MAX_QUERY_WORDS,
    ElasticsearchRetrievalError,
    ElasticsearchRetriever,
    ElasticsearchUnreachable,
    bulk_actions,
    connect_from_env,
    index_body,
    msearch_body,
    parse_msearch_response,
    reachable_client,
    redact_url,
    truncate_query,
)

DEMO_TRAIN = Path(__file__).parent.parent / "data" / "demo" / "train.jsonl"
ENV_VARS = ("SELFMEM_ES_URL", "SELFMEM_ES_API_KEY", "SELFMEM_ES_USER", "SELFMEM_ES_PASSWORD", "SELFMEM_ES_CA_CERTS")
# Nothing listens on the discard port of the loopback interface: a refused connection,
# and no traffic leaves the machine.
LOOPBACK = "127.0.0.1:9"


def _search(exclude=(), size=5, text="a query"):
    boolean = {"must": {"match": {"text": text}}}
    if exclude:
        boolean["must_not"] = {"ids": {"values": list(exclude)}}
    return {
        "query": {"bool": boolean},
        "size": size,
        "sort": [{"_score": "desc"}, {"row": "asc"}],
        "track_scores": True,
        "track_total_hits": False,
        "_source": False,
        "docvalue_fields": ["row"],
    }


def _hit(row, score):
    return {"_index": "idx", "_id": str(row), "_score": score, "fields": {"row": [row]}, "sort": [score, row]}


@pytest.fixture
def es_env(monkeypatch):
    """No SELFMEM_ES_* variable from the caller's environment leaks into a test."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# ---------------------------------------------------------------- request bodies


def test_index_body():
    assert index_body(1.2, 0.75) == {
        "settings": {
            "number_of_shards": 1,
            "number_of_replicas": 0,
            "similarity": {"selfmem_bm25": {"type": "BM25", "k1": 1.2, "b": 0.75}},
        },
        "mappings": {
            "properties": {
                "text": {"type": "text", "analyzer": "standard", "similarity": "selfmem_bm25"},
                "row": {"type": "integer"},
            }
        },
    }


def test_bulk_actions():
    actions = list(bulk_actions("idx", ["first doc", "", "Third, doc."]))
    assert actions == [
        {"_op_type": "index", "_index": "idx", "_id": "0", "_source": {"text": "first doc", "row": 0}},
        {"_op_type": "index", "_index": "idx", "_id": "1", "_source": {"text": "", "row": 1}},
        {"_op_type": "index", "_index": "idx", "_id": "2", "_source": {"text": "Third, doc.", "row": 2}},
    ]


def test_msearch_body_without_exclusion():
    assert msearch_body(["a query", ""], 5) == [{}, _search(), {}, _search(text="")]


def test_msearch_body_with_exclusion():
    body = msearch_body(["a query", "a query", "a query"], 5, exclude=[[3], [], [0, 7, 9]])
    assert body == [{}, _search(exclude=["3"]), {}, _search(), {}, _search(exclude=["0", "7", "9"])]


def test_msearch_body_rejects_bad_arguments():
    with pytest.raises(ValueError, match="topk must be between 1 and 10000"):
        msearch_body(["q"], 10_001)
    with pytest.raises(ValueError, match="topk must be between 1 and 10000"):
        msearch_body(["q"], 0)
    with pytest.raises(ValueError, match="exclude has 1 entries for 2 queries"):
        msearch_body(["q", "r"], 5, exclude=[[0]])


def test_long_queries_are_truncated_to_max_query_words():
    words = [f"w{i}" for i in range(MAX_QUERY_WORDS + 500)]
    long_query = " -- ".join(words) + " !"
    expected = " -- ".join(words[:MAX_QUERY_WORDS])
    assert truncate_query(long_query) == expected
    assert msearch_body([long_query], 3)[1]["query"]["bool"]["must"] == {"match": {"text": expected}}
    exact = " ".join(words[:MAX_QUERY_WORDS]) + " ?!"
    assert truncate_query(exact) == exact
    # words are the embedded backend's tokens: "don't" and "3.14" are one word each
    assert truncate_query("Don't stop at 3.14, please", max_words=3) == "Don't stop at"
    assert truncate_query("Don't stop at 3.14, please", max_words=4) == "Don't stop at 3.14"
    assert truncate_query("", max_words=2) == ""


# ---------------------------------------------------------------- response parsing


def test_parse_msearch_response_orders_ties_by_row_and_drops_zero_scores():
    response = {
        "took": 3,
        "responses": [
            {"status": 200, "hits": {"hits": [_hit(7, 2.5), _hit(3, 2.5), _hit(5, 3.0), _hit(9, 0.0)]}},
            {"status": 200, "hits": {"hits": []}},
            {"status": 200, "hits": {"hits": [_hit(0, 0.25)]}},
        ],
    }
    assert parse_msearch_response(response) == [[(5, 3.0), (3, 2.5), (7, 2.5)], [], [(0, 0.25)]]


def test_parse_msearch_response_raises_on_an_error_item():
    response = {
        "responses": [
            {"status": 200, "hits": {"hits": [_hit(1, 1.0)]}},
            {
                "status": 400,
                "error": {
                    "root_cause": [
                        {"type": "too_many_nested_clauses", "reason": "Query contains too many nested clauses"}
                    ],
                    "type": "search_phase_execution_exception",
                    "reason": "all shards failed",
                },
            },
        ]
    }
    with pytest.raises(
        ElasticsearchRetrievalError,
        match=r"query 257 \(status 400\): search_phase_execution_exception: all shards failed "
        r"\(root cause: Query contains too many nested clauses\)",
    ):
        parse_msearch_response(response, first_query=256)


# ---------------------------------------------------------------- connection and secrets


def test_connect_from_env_requires_the_url(es_env):
    with pytest.raises(RuntimeError, match="SELFMEM_ES_URL is not set"):
        connect_from_env()
    with pytest.raises(RuntimeError, match="SELFMEM_ES_URL is not set"):
        ElasticsearchRetriever.open("idx")


def test_connect_from_env_passes_credentials_to_the_client(es_env):
    made = []
    es_env.setattr(elastic, "Elasticsearch", lambda *args, **kwargs: made.append((args, kwargs)))
    es_env.setenv("SELFMEM_ES_URL", "https://es.example:9200")
    es_env.setenv("SELFMEM_ES_API_KEY", "key")
    es_env.setenv("SELFMEM_ES_CA_CERTS", "/certs/ca.pem")
    connect_from_env()
    es_env.delenv("SELFMEM_ES_API_KEY")
    es_env.setenv("SELFMEM_ES_USER", "elastic")
    es_env.setenv("SELFMEM_ES_PASSWORD", "pw")
    connect_from_env()
    timeout = elastic.REQUEST_TIMEOUT_S
    url, ca = "https://es.example:9200", "/certs/ca.pem"
    assert made == [
        ((url,), {"request_timeout": timeout, "api_key": "key", "ca_certs": ca}),
        ((url,), {"request_timeout": timeout, "basic_auth": ("elastic", "pw"), "ca_certs": ca}),
    ]


def test_connect_from_env_rejects_incomplete_or_conflicting_credentials(es_env):
    es_env.setenv("SELFMEM_ES_URL", f"http://{LOOPBACK}")
    es_env.setenv("SELFMEM_ES_USER", "elastic")
    with pytest.raises(RuntimeError, match="SELFMEM_ES_PASSWORD is not set"):
        connect_from_env()
    es_env.setenv("SELFMEM_ES_API_KEY", "key")
    with pytest.raises(RuntimeError, match="either SELFMEM_ES_API_KEY or SELFMEM_ES_USER"):
        connect_from_env()


def test_redact_url():
    assert redact_url("https://user:secret@es.example:9243/prefix?x=1") == "https://es.example:9243/prefix?x=1"
    assert redact_url("http://user:secret@[::1]:9200") == "http://[::1]:9200"
    assert redact_url("http://es.example:9200") == "http://es.example:9200"
    assert redact_url("http://user:secret@es.example:port") == "<unparseable URL>"


def _all_error_text(error):
    return "".join(traceback.format_exception(error)) + repr(error)


def test_unparseable_url_error_hides_the_password(es_env):
    es_env.setenv("SELFMEM_ES_URL", "http://user:secret@127.0.0.1:notaport")
    with pytest.raises(RuntimeError, match="cannot configure an Elasticsearch client") as raised:
        connect_from_env()
    assert "secret" not in _all_error_text(raised.value)
    assert raised.value.__context__ is None and raised.value.__cause__ is None


@pytest.mark.parametrize(
    "env",
    [
        {"SELFMEM_ES_URL": f"http://user:secret@{LOOPBACK}"},
        {"SELFMEM_ES_URL": f"http://{LOOPBACK}", "SELFMEM_ES_USER": "user", "SELFMEM_ES_PASSWORD": "secret"},
        {"SELFMEM_ES_URL": f"http://{LOOPBACK}", "SELFMEM_ES_API_KEY": "secret"},
    ],
    ids=["url-userinfo", "user-password", "api-key"],
)
def test_connection_errors_and_logs_hide_credentials(es_env, caplog, capsys, env):
    for name, value in env.items():
        es_env.setenv(name, value)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(Exception) as raised:
        ElasticsearchRetriever.open("selfmem-test")
    text = _all_error_text(raised.value) + caplog.text + "".join(capsys.readouterr())
    assert LOOPBACK in caplog.text  # the client did try, and logged its attempt
    for secret in ("secret", base64.b64encode(b"user:secret").decode()):
        assert secret not in text


class _RefusingServer(BaseHTTPRequestHandler):
    """An Elasticsearch that answers every request 401: up, but not for these credentials."""

    def do_GET(self):
        body = json.dumps({"error": {"type": "security_exception", "reason": "missing credentials"},
                           "status": 401}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # not on the test's stderr
        pass


def serve(port):
    """A ``_RefusingServer`` on 127.0.0.1:``port`` in a thread; call ``shutdown()`` on it."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _RefusingServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_an_unreachable_server_is_retried_with_backoff_then_named_without_credentials(es_env):
    port = free_port()  # nothing listens there: each attempt is refused at once
    es_env.setenv("SELFMEM_ES_URL", f"http://elastic:secret@127.0.0.1:{port}")
    waits = []
    es_env.setattr(elastic.time, "sleep", waits.append)
    with pytest.raises(ElasticsearchUnreachable) as raised:
        reachable_client(attempts=4, backoff=0.5)
    assert waits == [0.5, 1.0, 2.0]
    assert str(raised.value) == (
        f"no Elasticsearch server answers at http://127.0.0.1:{port} (SELFMEM_ES_URL) after 4 attempts over 3.5 s: "
        f"[Errno 111] Connection refused; start the server or set SELFMEM_ES_URL to its address (retries: "
        f"retrieval.connect_attempts, retrieval.connect_backoff)")
    assert isinstance(raised.value, ConfigError)  # a setting to fix: the launchers print no traceback
    assert "secret" not in _all_error_text(raised.value)


def test_a_server_that_comes_up_during_the_backoff_is_used(es_env):
    port = free_port()
    es_env.setenv("SELFMEM_ES_URL", f"http://127.0.0.1:{port}")
    servers = []
    es_env.setattr(elastic.time, "sleep", lambda seconds: servers.append(serve(port)))
    try:
        client = reachable_client(attempts=3, backoff=1.0)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    assert len(servers) == 1  # refused once; the 401 of the second attempt is an answer: the server is up
    assert isinstance(client, Elasticsearch)


def test_retries_need_an_attempt_and_a_backoff_of_at_least_zero(es_env):
    with pytest.raises(ConfigError, match="retrieval.connect_attempts must be at least 1"):
        reachable_client(attempts=0, backoff=1.0)


# ---------------------------------------------------------------- calls issued, through a fake transport node


class _Reply(NamedTuple):
    meta: ApiResponseMeta
    body: bytes


def _ndjson(body):
    return [json.loads(line) for line in body.decode().splitlines() if line]


def fake_client(answer):
    """A real client whose transport node records requests and answers ``answer(method, path, body)``.

    The node never opens a socket; ``answer`` returns (status, JSON payload or None).
    """
    calls = []

    class FakeNode(BaseNode):
        def perform_request(self, method, target, body=None, headers=None, request_timeout=None):
            calls.append((method, target, body))
            status, payload = answer(method, target, body)
            headers = HttpHeaders({"content-type": "application/json", "x-elastic-product": "Elasticsearch"})
            meta = ApiResponseMeta(status=status, http_version="1.1", headers=headers, duration=0.0, node=self.config)
            return _Reply(meta, b"" if payload is None else json.dumps(payload).encode())

    return Elasticsearch(f"http://{LOOPBACK}", node_class=FakeNode), calls


def _index_server(exists):
    def answer(method, target, body):
        if method == "HEAD":
            return (200 if exists else 404), None
        if target.startswith("/_bulk"):
            items = [{"index": {"_id": a["index"]["_id"], "status": 201}} for a in _ndjson(body)[::2]]
            return 200, {"took": 1, "errors": False, "items": items}
        return 200, {"acknowledged": True}

    return answer


@pytest.mark.parametrize("exists", [True, False])
def test_build_recreates_the_index_then_bulk_indexes_and_refreshes(monkeypatch, exists):
    monkeypatch.setattr(elastic, "BULK_CHUNK", 2)
    client, calls = fake_client(_index_server(exists))
    retriever = ElasticsearchRetriever.build(["first doc", "second", "Third, doc."], 0.9, 0.4, "idx", client=client)
    assert (retriever.client, retriever.index_name) == (client, "idx")

    expected = [("HEAD", "/idx")] + ([("DELETE", "/idx")] if exists else [])
    expected += [("PUT", "/idx"), ("PUT", "/_bulk"), ("PUT", "/_bulk"), ("POST", "/idx/_refresh")]
    assert [(m, t.split("?")[0]) for m, t, _ in calls] == expected
    creates = [json.loads(body) for m, t, body in calls if (m, t) == ("PUT", "/idx")]
    assert creates == [index_body(0.9, 0.4)]
    bulks = [_ndjson(body) for _, t, body in calls if t.startswith("/_bulk")]
    assert bulks == [
        [
            {"index": {"_index": "idx", "_id": "0"}}, {"text": "first doc", "row": 0},
            {"index": {"_index": "idx", "_id": "1"}}, {"text": "second", "row": 1},
        ],
        [{"index": {"_index": "idx", "_id": "2"}}, {"text": "Third, doc.", "row": 2}],
    ]


def test_open_requires_an_existing_index():
    client, calls = fake_client(_index_server(exists=False))
    with pytest.raises(LookupError, match="Elasticsearch index 'idx' does not exist"):
        ElasticsearchRetriever.open("idx", client=client)
    client, calls = fake_client(_index_server(exists=True))
    assert ElasticsearchRetriever.open("idx", client=client).index_name == "idx"
    assert [(m, t) for m, t, _ in calls] == [("HEAD", "/idx")]


def test_search_sends_chunks_and_returns_hits_in_query_order(monkeypatch):
    monkeypatch.setattr(elastic, "MSEARCH_CHUNK", 2)

    def answer(method, target, body):
        # query "qN" hits row N + 10 with score N + 1, and row 99 with score 0 (dropped)
        searches = _ndjson(body)[1::2]
        numbers = [int(s["query"]["bool"]["must"]["match"]["text"][1:]) for s in searches]
        items = [{"status": 200, "hits": {"hits": [_hit(99, 0.0), _hit(n + 10, n + 1.0)]}} for n in numbers]
        return 200, {"responses": items}

    client, calls = fake_client(answer)
    retriever = ElasticsearchRetriever(client, "idx")
    queries = [f"q{n}" for n in range(5)]
    assert retriever.search(queries, 3, exclude=[[], [1], [2], [], [4]]) == [[(n + 10, n + 1.0)] for n in range(5)]

    assert [(m, t.split("?")[0]) for m, t, _ in calls] == [("POST", "/idx/_msearch")] * 3
    sent = [_ndjson(body) for _, _, body in calls]
    assert sent == [
        [{}, _search(size=3, text="q0"), {}, _search(["1"], size=3, text="q1")],
        [{}, _search(["2"], size=3, text="q2"), {}, _search(size=3, text="q3")],
        [{}, _search(["4"], size=3, text="q4")],
    ]
    assert retriever.search([], 3) == []
    with pytest.raises(ValueError, match="exclude has 1 entries for 2 queries"):
        retriever.search(["q0", "q1"], 3, exclude=[[0]])


def test_search_reports_the_failing_query_across_chunks(monkeypatch):
    monkeypatch.setattr(elastic, "MSEARCH_CHUNK", 2)

    def answer(method, target, body):
        n = len(_ndjson(body)) // 2
        items = [{"status": 200, "hits": {"hits": []}}] * n
        if len(calls) == 2:  # the second chunk: its first item fails
            items[0] = {"status": 400, "error": {"type": "parse_exception", "reason": "bad query"}}
        return 200, {"responses": items}

    client, calls = fake_client(answer)
    with pytest.raises(ElasticsearchRetrievalError, match=r"query 2 \(status 400\): parse_exception: bad query"):
        ElasticsearchRetriever(client, "idx").search(["a", "b", "c"], 3)


def test_a_failing_query_is_named_by_its_example_in_the_split():
    def answer(method, target, body):
        n = len(_ndjson(body)) // 2
        items = [{"status": 200, "hits": {"hits": []}}] * n
        if len(calls) == 2:  # the second batch of 3: its second query fails
            items[1] = {"status": 400, "error": {"type": "parse_exception", "reason": "bad query"}}
        return 200, {"responses": items}

    client, calls = fake_client(answer)
    config = load_config(None, ["retrieval.batch_size=3", "retrieval.backend=elasticsearch"])
    examples = [Example(f"source {i}", f"target {i}") for i in range(20)]
    lines = memory_lines(config, ElasticsearchRetriever(client, "idx"), "dev", examples, range(10, 16), examples,
                         None, show_progress=False)
    with pytest.raises(ElasticsearchRetrievalError, match=r"^retrieving dev examples 13 to 15 \(query i is example 13 \+ i\): "
                                           r"Elasticsearch search failed for query 1 \(status 400\)"):
        list(lines)


def test_the_default_index_name_holds_the_run_directory(tmp_path, monkeypatch):
    opened = []
    monkeypatch.setattr(elastic, "reachable_client", lambda attempts, backoff: None)
    monkeypatch.setattr(elastic.ElasticsearchRetriever, "build", lambda *args: None)
    monkeypatch.setattr(elastic.ElasticsearchRetriever, "open", lambda name, client: opened.append(name))
    for root in ("a", "b", "a"):
        config = load_config(None, ["retrieval.backend=elasticsearch", f"run.root={tmp_path / root}",
                                    "run.name=Joint"])
        open_retriever(config, DistEnv(0, 1, 0, 1), [], RunPaths(config.run_dir))
    assert opened[0] == opened[2] != opened[1] and re.fullmatch("selfmem-joint-[0-9a-f]{8}", opened[0])


# ---------------------------------------------------------------- against a real server


def test_agrees_with_the_embedded_backend():
    if not os.environ.get("SELFMEM_ES_URL"):
        pytest.skip("SELFMEM_ES_URL not set: no Elasticsearch server to test against")
    with open(DEMO_TRAIN, encoding="utf-8") as f:
        documents = [json.loads(line)["src"] for _, line in zip(range(300), f)]
    documents += documents[:20]  # duplicates, excluded with their originals
    queries = documents[:50]
    exclude = [[i, 300 + i] if i < 20 else [i] for i in range(50)]
    reference = BM25Retriever.build(documents, k1=1.2, b=0.75).search(queries, 10, exclude)

    index_name = f"selfmem-test-{uuid.uuid4().hex}"
    retriever = ElasticsearchRetriever.build(documents, 1.2, 0.75, index_name)
    try:
        hits = ElasticsearchRetriever.open(index_name).search(queries, 10, exclude)
    finally:
        retriever.client.indices.delete(index=index_name)

    assert sum(len(h) for h in reference) > 100
    for i, (got, want) in enumerate(zip(hits, reference, strict=True)):
        assert [row for row, _ in got] == [row for row, _ in want], f"query {i}"
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-4), f"query {i}"
