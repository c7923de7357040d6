"""Elasticsearch BM25 backend with the same contract as the embedded ``bm25`` backend.

Documents are indexed with ``_id`` = str(position) and an integer ``row`` = position on
a one-shard index (so document frequencies are global, as in the embedded backend);
queries go through ``_msearch`` and come back as ``(row, score)`` hits, best first, ties
by lower row, non-positive scores dropped.

The connection is configured only from the environment (see ``connect_from_env``).

Empty queries, and queries without a word character, are sent as they are: a ``match``
on text that analyzes to no token is a valid request that matches nothing, so they get
no hits, as in the embedded backend.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from elastic_transport import TransportError
from elasticsearch import ApiError, Elasticsearch, helpers

from selfmem.common.config import MAX_RESULT_WINDOW, ConfigError
from selfmem.retrieve.bm25 import WORD_PATTERN, Hits

# Elasticsearch's `indices.query.bool.max_clause_count` was 1024 by default (8.x derives
# it from heap and CPU count, 1024 at the least), and a match query makes one clause per
# query token, so a summarization source of thousands of words would fail the whole
# msearch item. Queries are cut after this many words (the embedded backend's word rule);
# the two backends agree only for queries of at most this many words, unless the
# embedded backend is given the same truncated queries.
MAX_QUERY_WORDS = 1000
# Queries per _msearch request: large enough to amortize the round trip, small enough
# that one request's body and response stay a few MB for long queries and topk 100.
MSEARCH_CHUNK = 256
# Documents per _bulk request (the helpers' default).
BULK_CHUNK = 500
# Refreshing or searching a large index can exceed the client's 10 s default.
REQUEST_TIMEOUT_S = 120.0
# One attempt of the reachability probe: an address that drops packets would otherwise hold
# each attempt for REQUEST_TIMEOUT_S, times the client's own retries.
PROBE_TIMEOUT_S = 10.0

_SIMILARITY = "selfmem_bm25"


class ElasticsearchRetrievalError(RuntimeError):
    """An Elasticsearch request item failed."""


class ElasticsearchUnreachable(ConfigError):
    """No server answers at ``SELFMEM_ES_URL``: a setting to correct or a server to start. Its
    message says all there is to say (a traceback would show only the client's internals)."""


def redact_url(url: str) -> str:
    """``url`` without its userinfo (user name and password), for error messages."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparseable URL>"
    if "@" not in parts.netloc:
        return url
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def connect_from_env() -> Elasticsearch:
    """A client configured from the environment only.

    ``SELFMEM_ES_URL`` (required; credentials in its userinfo are accepted), then either
    ``SELFMEM_ES_API_KEY`` or ``SELFMEM_ES_USER`` + ``SELFMEM_ES_PASSWORD``, and
    optionally ``SELFMEM_ES_CA_CERTS`` (a CA bundle path for TLS).
    """
    url = os.environ.get("SELFMEM_ES_URL", "").strip()
    if not url:
        raise RuntimeError(
            "SELFMEM_ES_URL is not set: export the Elasticsearch address "
            "(e.g. https://localhost:9200) to use the elasticsearch retrieval backend"
        )
    api_key = os.environ.get("SELFMEM_ES_API_KEY")
    user = os.environ.get("SELFMEM_ES_USER")
    password = os.environ.get("SELFMEM_ES_PASSWORD")
    options: dict[str, Any] = {"request_timeout": REQUEST_TIMEOUT_S}
    if api_key and (user or password):
        raise RuntimeError("set either SELFMEM_ES_API_KEY or SELFMEM_ES_USER + SELFMEM_ES_PASSWORD, not both")
    if api_key:
        options["api_key"] = api_key
    elif user or password:
        if not (user and password):
            missing = "SELFMEM_ES_PASSWORD" if user else "SELFMEM_ES_USER"
            raise RuntimeError(f"{missing} is not set: SELFMEM_ES_USER and SELFMEM_ES_PASSWORD go together")
        options["basic_auth"] = (user, password)
    if ca_certs := os.environ.get("SELFMEM_ES_CA_CERTS"):
        options["ca_certs"] = ca_certs
    try:
        return Elasticsearch(url, **options)
    except Exception as error:
        # the client's own messages quote the URL whole, userinfo included
        failure = f"{type(error).__name__}: {_without_credentials(str(error), url)}"
    # raised outside the handler so that the original error is not attached as context
    raise RuntimeError(
        f"cannot configure an Elasticsearch client for {redact_url(url)} (from SELFMEM_ES_URL): {failure}"
    )


def reachable_client(attempts: int, backoff: float) -> Elasticsearch:
    """``connect_from_env``'s client, once its server answers: up to ``attempts`` probes, the
    first retry after ``backoff`` seconds and each later one after twice the wait before
    (``retrieval.connect_attempts`` and ``connect_backoff``: a server that is restarting gets
    the time to come back). No answer at all is ``ElasticsearchUnreachable``, which names the
    address without its credentials."""
    if attempts < 1 or backoff < 0:
        raise ConfigError(f"retrieval.connect_attempts must be at least 1 and retrieval.connect_backoff at least 0, "
                          f"got {attempts} and {backoff}")
    client = connect_from_env()
    probe = client.options(request_timeout=PROBE_TIMEOUT_S, max_retries=0)
    waits = [backoff * 2 ** i for i in range(attempts - 1)]
    for wait in [*waits, None]:
        try:
            probe.info()
            return client
        except ApiError:  # an HTTP answer, even a refusal of this request: the server is up
            return client
        except TransportError as error:  # no answer: refused, no such host, timed out
            reason = _innermost(error)
        if wait is not None:
            time.sleep(wait)
    url = os.environ["SELFMEM_ES_URL"].strip()
    reason = _without_credentials(reason, url)
    raise ElasticsearchUnreachable(
        f"no Elasticsearch server answers at {redact_url(url)} (SELFMEM_ES_URL) after {attempts} "
        f"attempt{'s' if attempts > 1 else ''} over {sum(waits):g} s: {reason}; start the server or set "
        f"SELFMEM_ES_URL to its address (retries: retrieval.connect_attempts, retrieval.connect_backoff)")


def _innermost(error: BaseException) -> str:
    """The message of the exception at the bottom of ``error``'s chain: the network's own
    words (``[Errno 111] Connection refused``), not the layers of client wrappers above it."""
    while error.__cause__ or error.__context__:
        error = error.__cause__ or error.__context__
    return str(error) or type(error).__name__


def _url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def _without_credentials(text: str, url: str) -> str:
    """``text`` with ``url`` quoted without its userinfo (``redact_url``), and every credential of the
    environment (the API key, the password, the URL's own password) replaced by ***."""
    text = text.replace(url, redact_url(url))
    for secret in (os.environ.get("SELFMEM_ES_API_KEY"), os.environ.get("SELFMEM_ES_PASSWORD"), _url_password(url)):
        if secret:
            text = text.replace(secret, "***")
    return text


def index_body(k1: float, b: float) -> dict:
    """Settings and mappings of the index: one shard, Lucene BM25(k1, b), standard analyzer."""
    return {
        "settings": {
            "number_of_shards": 1,
            "number_of_replicas": 0,
            "similarity": {_SIMILARITY: {"type": "BM25", "k1": k1, "b": b}},
        },
        "mappings": {
            "properties": {
                "text": {"type": "text", "analyzer": "standard", "similarity": _SIMILARITY},
                "row": {"type": "integer"},
            }
        },
    }


def bulk_actions(index_name: str, documents: Iterable[str]) -> Iterator[dict]:
    """One index action per document, for ``elasticsearch.helpers.bulk``."""
    for row, text in enumerate(documents):
        yield {"_op_type": "index", "_index": index_name, "_id": str(row), "_source": {"text": text, "row": row}}


def truncate_query(text: str, max_words: int = MAX_QUERY_WORDS) -> str:
    """``text`` cut after its first ``max_words`` words."""
    ends = [m.end() for m in itertools.islice(WORD_PATTERN.finditer(text), max_words + 1)]
    return text if len(ends) <= max_words else text[: ends[max_words - 1]]


def msearch_body(queries: Sequence[str], topk: int, exclude: Sequence[Sequence[int]] | None = None) -> list[dict]:
    """The ``_msearch`` body: a header and a search per query (see ``ElasticsearchRetriever.search``)."""
    if not 1 <= topk <= MAX_RESULT_WINDOW:
        raise ValueError(f"topk must be between 1 and {MAX_RESULT_WINDOW} (index.max_result_window), got {topk}")
    if exclude is not None and len(exclude) != len(queries):
        raise ValueError(f"exclude has {len(exclude)} entries for {len(queries)} queries")
    body: list[dict] = []
    for i, query in enumerate(queries):
        boolean: dict[str, Any] = {"must": {"match": {"text": truncate_query(query)}}}
        if exclude is not None and exclude[i]:
            boolean["must_not"] = {"ids": {"values": [str(row) for row in exclude[i]]}}
        body.append({})
        body.append(
            {
                "query": {"bool": boolean},
                "size": topk,
                # an explicit tie-break: the embedded backend orders ties by document id
                "sort": [{"_score": "desc"}, {"row": "asc"}],
                "track_scores": True,
                "track_total_hits": False,
                "_source": False,
                "docvalue_fields": ["row"],
            }
        )
    return body


def parse_msearch_response(response: Mapping[str, Any], first_query: int = 0) -> list[Hits]:
    """``(row, score)`` hits of each msearch item, best first, ties by row, scores > 0.

    ``first_query`` numbers the items in error messages.
    """
    results: list[Hits] = []
    for i, item in enumerate(response["responses"]):
        if "error" in item:
            error = item["error"]
            causes = [c.get("reason", "") for c in error.get("root_cause", ())]
            detail = f"{error.get('type', 'error')}: {error.get('reason', '')}"
            if causes:
                detail += f" (root cause: {'; '.join(causes)})"
            raise ElasticsearchRetrievalError(
                f"Elasticsearch search failed for query {first_query + i} (status {item.get('status')}): {detail}"
            )
        hits = [(int(hit["fields"]["row"][0]), float(hit["_score"])) for hit in item["hits"]["hits"]]
        results.append(sorted((h for h in hits if h[1] > 0), key=lambda h: (-h[1], h[0])))
    return results


class ElasticsearchRetriever:
    """Query a BM25 index of the train sources held by an Elasticsearch server."""

    def __init__(self, client: Elasticsearch, index_name: str):
        self.client = client
        self.index_name = index_name

    @classmethod
    def build(
        cls, documents: Sequence[str], k1: float, b: float, index_name: str, client: Elasticsearch | None = None
    ) -> "ElasticsearchRetriever":
        """(Re)create ``index_name`` holding ``documents``; a document's id is its position."""
        client = connect_from_env() if client is None else client
        if client.indices.exists(index=index_name):
            client.indices.delete(index=index_name)
        body = index_body(k1, b)
        client.indices.create(index=index_name, settings=body["settings"], mappings=body["mappings"])
        helpers.bulk(client, bulk_actions(index_name, documents), chunk_size=BULK_CHUNK)
        client.indices.refresh(index=index_name)
        return cls(client, index_name)

    @classmethod
    def open(cls, index_name: str, client: Elasticsearch | None = None) -> "ElasticsearchRetriever":
        """Attach to an index that ``build`` made (on another rank)."""
        client = connect_from_env() if client is None else client
        if not client.indices.exists(index=index_name):
            raise LookupError(f"Elasticsearch index {index_name!r} does not exist: build it first")
        return cls(client, index_name)

    def search(self, queries: Sequence[str], topk: int, exclude: Sequence[Sequence[int]] | None = None) -> list[Hits]:
        """The ``topk`` best (doc id, score) hits of each query.

        ``exclude[i]``, when given, lists the documents query i must not retrieve (a train
        example's own pair and its exact duplicates).
        """
        if exclude is not None and len(exclude) != len(queries):
            raise ValueError(f"exclude has {len(exclude)} entries for {len(queries)} queries")
        results: list[Hits] = []
        for start in range(0, len(queries), MSEARCH_CHUNK):
            stop = start + MSEARCH_CHUNK
            body = msearch_body(queries[start:stop], topk, None if exclude is None else exclude[start:stop])
            response = self.client.msearch(index=self.index_name, searches=body)
            hits = parse_msearch_response(response, first_query=start)
            if len(hits) != len(body) // 2:
                raise ElasticsearchRetrievalError(f"msearch answered {len(hits)} of {len(body) // 2} queries")
            results.extend(hits)
        return results
