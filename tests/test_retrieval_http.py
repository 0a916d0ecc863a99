"""The Search-R1 retrieval API over loopback HTTP: our server, our client, and each against the other side."""

from __future__ import annotations

import http.client
import json
import random
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from lit_search_rl.retrieval.base import Document, RetrievalError, Retriever, SearchStopped, raise_if_stopped, stop_when
from lit_search_rl.retrieval.cache import CachedRetriever
from lit_search_rl.retrieval.http_client import HTTPRetriever
from lit_search_rl.retrieval.index import load_retriever
from lit_search_rl.retrieval.server import RetrievalServer, ServerLimits
from tests.http_doubles import TricklingServer


@pytest.fixture(scope="module")
def server(bm25_dir: Path):
    srv = RetrievalServer(load_retriever(bm25_dir), port=0, limits=ServerLimits(max_queries=8, max_topk=5,
                          max_body_bytes=16384), info={"kind": "bm25"}).start()  # fmt: skip
    yield srv
    srv.shutdown()


def post(server: RetrievalServer, payload, raw: bytes | None = None) -> requests.Response:
    data = raw if raw is not None else json.dumps(payload).encode()
    return requests.post(f"{server.url}/retrieve", data=data, headers={"Content-Type": "application/json"}, timeout=10)


def test_search_r1_client_request_and_reading(server: RetrievalServer, bm25_dir: Path) -> None:
    # What Search-R1's generation code sends and how it reads the answer.
    payload = {"queries": ["festival", "born"], "topk": 3, "return_scores": True}
    answer = requests.post(f"{server.url}/retrieve", json=payload, timeout=10).json()
    assert set(answer) == {"result"} and len(answer["result"]) == 2
    for hits in answer["result"]:
        assert len(hits) == 3
        for hit in hits:
            assert set(hit) == {"document", "score"} and isinstance(hit["score"], float)
            title, text = hit["document"]["contents"].split("\n", 1)  # Search-R1's _passages2string
            assert set(hit["document"]) >= {"id", "contents"} and title and text
    local = load_retriever(bm25_dir).search(payload["queries"], 3)
    assert [[h["document"]["id"] for h in hits] for hits in answer["result"]] == [[d.id for d in ds] for ds in local]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_without_scores_the_shape_is_rows_for_any_number_of_queries(server: RetrievalServer, n: int) -> None:
    answer = post(server, {"queries": ["festival"] * n, "topk": 2, "return_scores": False})
    assert answer.status_code == 200
    result = answer.json()["result"]
    assert len(result) == n and all(len(hits) == 2 and all("contents" in row for row in hits) for hits in result)


@pytest.mark.parametrize("topk", [None, 0, "absent"])
def test_missing_null_or_zero_topk_means_three(server: RetrievalServer, topk) -> None:
    payload = {"queries": ["festival"]} if topk == "absent" else {"queries": ["festival"], "topk": topk}
    assert len(post(server, payload).json()["result"][0]) == 3


def test_topk_above_the_cap_is_capped_not_padded(server: RetrievalServer) -> None:
    hits = post(server, {"queries": ["festival"], "topk": 10**6, "return_scores": True}).json()["result"][0]
    assert len(hits) == 5 and all(h["score"] > 0 for h in hits)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"{not json", 400),
        (b"[1, 2]", 400),
        (b'{"topk": 3}', 400),
        (b'{"queries": "festival"}', 400),
        (b'{"queries": [1, 2]}', 400),
        (b'{"queries": ["a"], "topk": -1}', 400),
        (b'{"queries": ["a"], "topk": 3.5}', 400),
        (b'{"queries": ["a"], "topk": "3.5"}', 400),
        (b'{"queries": ["a"], "topk": "three"}', 400),
        (b'{"queries": ["a"], "topk": true}', 400),
        (b'{"queries": ["a"], "topk": [3]}', 400),
        (b'{"queries": ["a"], "topk": "-2"}', 400),
        (b'{"queries": ["a"], "return_scores": "yes"}', 400),
        (json.dumps({"queries": ["a"] * 9}).encode(), 413),
        (json.dumps({"queries": ["a" * 20000]}).encode(), 413),
        (b'{"queries": ' + b"[" * 1000 + b"]" * 1000 + b"}", 400),  # deeper than the parser's stack
        (b'{"queries": ["a"], "topk": ' + b"7" * 5000 + b"}", 400),  # more digits than Python converts
        (b'{"queries": ["a"], "topk": 1e999}', 400),
        (b'{"queries": ["a"], "topk": NaN}', 400),
        (b'{"queries": ["\\ud800 paris"]}', 400),  # a lone surrogate
    ],
)
def test_malformed_requests_get_a_4xx_json_error(server: RetrievalServer, raw: bytes, status: int) -> None:
    response = post(server, None, raw=raw)
    assert response.status_code == status and "error" in response.json()
    assert post(server, {"queries": ["festival"]}).status_code == 200  # still serving


def test_health_and_unknown_paths(server: RetrievalServer) -> None:
    health = requests.get(f"{server.url}/health", timeout=5)
    assert health.status_code == 200 and health.json() == {"status": "ok", "kind": "bm25"}
    assert requests.get(f"{server.url}/nope", timeout=5).status_code == 404
    assert requests.post(f"{server.url}/nope", json={}, timeout=5).status_code == 404
    assert requests.post(f"{server.url}/retrieve", json={"queries": [""], "topk": 2}, timeout=5).json() == {
        "result": [[]]
    }  # an empty query has no hits (Search-R1's server returns some)


def test_our_client_against_our_server_matches_in_process(server: RetrievalServer, bm25_dir: Path) -> None:
    client = HTTPRetriever(server.url, max_queries_per_request=3)
    queries = ["festival", "", "born", "company", "film", "band", "capital"]
    remote = client.search(queries, 3)
    local = load_retriever(bm25_dir).search(queries, 3)
    assert remote == local  # ids, titles, texts and scores
    assert client.health()["status"] == "ok"
    client.close()


def test_a_forked_client_opens_connections_of_its_own(server: RetrievalServer, bm25_dir: Path) -> None:
    client = CachedRetriever(HTTPRetriever(server.url))
    assert client.inner.health()["status"] == "ok"  # a pooled connection the parent holds
    inherited = client.inner.session
    client.forked()  # as a rollout worker does after the fork
    assert client.inner.session is not inherited
    assert client.search(["festival"], 2) == load_retriever(bm25_dir).search(["festival"], 2)
    client.close()
    inherited.close()


def test_a_failing_retriever_gives_500_and_the_server_survives() -> None:
    class Broken(Retriever):
        def _search(self, queries, k):
            raise OSError("disk gone")

    srv = RetrievalServer(Broken(), port=0).start()
    try:
        response = requests.post(f"{srv.url}/retrieve", json={"queries": ["a"]}, timeout=5)
        assert response.status_code == 500 and "disk gone" in response.json()["error"]
        assert requests.get(f"{srv.url}/health", timeout=5).status_code == 200
    finally:
        srv.shutdown()


class SearchR1Double(BaseHTTPRequestHandler):
    """A server written from the Search-R1 API description: whole rows, quoted wiki titles, extra fields.

    Fails with 503 for the first ``failures`` requests, to exercise the client's retries.
    """

    failures = 0
    requests_seen: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests_seen.append(body)
        if type(self).failures > 0:
            type(self).failures -= 1
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        rows = [{"id": str(i), "contents": f'"Title {i}"\ntext about {q}', "url": f"wiki/{i}"}
                for q in body["queries"] for i in range(body.get("topk") or 3)]  # fmt: skip
        k = body.get("topk") or 3
        per_query = [rows[j * k : (j + 1) * k] for j in range(len(body["queries"]))]
        if body.get("return_scores"):
            result = [[{"document": r, "score": 1.0 - 0.1 * i} for i, r in enumerate(hits)] for hits in per_query]
        else:
            result = per_query
        data = json.dumps({"result": result}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def double():
    SearchR1Double.failures = 0
    SearchR1Double.requests_seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), SearchR1Double)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_our_client_against_a_search_r1_server(double) -> None:
    client = HTTPRetriever(f"http://127.0.0.1:{double.server_address[1]}/retrieve", max_queries_per_request=2)
    results = client.search(["alpha", "beta", "gamma"], 2)
    assert [len(r) for r in results] == [2, 2, 2]
    first = results[0][0]
    assert first == Document("0", "Title 0", "text about alpha", 1.0)
    assert first.row["url"] == "wiki/0"  # extra fields pass through
    assert [len(r["queries"]) for r in SearchR1Double.requests_seen] == [2, 1]  # many queries per request
    assert all(r["topk"] == 2 and r["return_scores"] is True for r in SearchR1Double.requests_seen)


def test_client_retries_5xx_then_succeeds_and_gives_up_clearly(double) -> None:
    url = f"http://127.0.0.1:{double.server_address[1]}"
    SearchR1Double.failures = 2
    client = HTTPRetriever(url, max_retries=2, backoff=0.01)
    assert len(client.search(["alpha"], 1)[0]) == 1
    assert len(SearchR1Double.requests_seen) == 3
    SearchR1Double.failures = 10
    with pytest.raises(RetrievalError, match=r"did not answer after 3 attempts \(HTTP 503"):
        client.search(["alpha"], 1)


def test_client_connection_refused_is_a_clear_error_after_bounded_retries() -> None:
    import socket

    with socket.socket() as s:  # a port that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = HTTPRetriever(f"http://127.0.0.1:{port}", max_retries=2, backoff=0.05, timeout=2)
    start = time.perf_counter()
    with pytest.raises(RetrievalError, match="did not answer after 3 attempts .*ConnectionError") as info:
        client.search(["alpha"], 3)
    assert "Connection refused" in str(info.value) and "\n" not in str(info.value)
    assert 0.15 <= time.perf_counter() - start < 10  # backoff 0.05 + 0.1, and bounded
    with pytest.raises(RetrievalError, match="health check"):
        client.health()


def test_serve_retriever_command_serves_until_stopped(bm25_dir: Path, tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "lit_search_rl.cli", "serve-retriever", "--index", str(bm25_dir), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = process.stdout.readline()
        assert "serving" in line and "127.0.0.1" in line, process.stderr.read() if process.poll() is not None else line
        url = line.split(" at ")[1].strip()
        answer = requests.post(url, json={"queries": ["festival"], "topk": 2}, timeout=10).json()
        assert len(answer["result"][0]) == 2
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_index_command_reports_the_bad_line(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "0", "contents": "A\\nb"}\n{"id": 1}\n')
    result = subprocess.run(
        [sys.executable, "-m", "lit_search_rl.cli", "index", "--corpus", str(corpus), "--kind", "bm25",
         "--out", str(tmp_path / "idx"), "--no_progress"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and f"{corpus}:2" in result.stderr and "contents" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "idx").exists()


def raw_exchange(server: RetrievalServer, data: bytes, close_write: bool = False) -> tuple[int, dict, bytes]:
    """Send raw request bytes and read one answer: (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=10) as sock:
        sock.sendall(data)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        response = http.client.HTTPResponse(sock, method=data.split(b" ", 1)[0].decode())
        response.begin()
        return response.status, dict(response.getheaders()), response.read()


@pytest.mark.parametrize("topk", [2, 2.0, "2", " 2 "])
def test_an_integral_topk_in_any_json_form_is_taken(server: RetrievalServer, topk) -> None:
    # Search-R1's server reads topk leniently; its clients (and scripts written for it) may send any of these.
    answer = post(server, {"queries": ["festival"], "topk": topk})
    assert answer.status_code == 200 and len(answer.json()["result"][0]) == 2


def test_random_bodies_always_get_an_http_answer(server: RetrievalServer) -> None:
    # Bodies mutated from a valid request: each one gets a JSON answer, never a dropped connection or a 5xx.
    rng = random.Random(0)
    valid = json.dumps({"queries": ["festival", "born"], "topk": 2, "return_scores": True}).encode()
    pieces = [b"[", b"{", b"]", b"}", b'"', b"\\", b"\\ud800", b"1" * 30, b"-", b"e9", b"null", b",", b":", b"\xff"]
    statuses = set()
    for _ in range(150):
        body = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(body) + 1)
            body[at : at + rng.randint(0, 3)] = rng.choice(pieces) * rng.choice([1, 1, 2, 300])
        response = post(server, None, raw=bytes(body))
        assert response.status_code < 500 and set(response.json()) in ({"result"}, {"error"}), bytes(body)
        statuses.add(response.status_code)
    assert 400 in statuses


def test_a_lone_surrogate_in_a_dense_query_is_a_400_naming_it(dense_dir: Path) -> None:
    srv = RetrievalServer(load_retriever(dense_dir), port=0).start()
    try:
        response = post(srv, None, raw=b'{"queries": ["festival", "\\ud800 paris"]}')
        assert response.status_code == 400
        assert "queries[1]" in response.json()["error"] and "'\\ud800 paris'" in response.json()["error"]
        assert post(srv, {"queries": ["festival"]}).status_code == 200
    finally:
        srv.shutdown()


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("GET", "/retrieve", "POST"), ("PUT", "/retrieve", "POST"), ("DELETE", "/retrieve/", "POST"),
     ("POST", "/health", "GET"), ("PATCH", "/health", "GET")],
)  # fmt: skip
def test_a_wrong_method_on_a_known_path_is_405_with_allow(server: RetrievalServer, method, path, allow) -> None:
    response = requests.request(method, f"{server.url}{path}", json={"queries": ["a"]}, timeout=5)
    assert response.status_code == 405 and response.headers["Allow"] == allow and "error" in response.json()
    head = requests.head(f"{server.url}/retrieve", timeout=5)
    assert head.status_code == 405 and head.headers["Allow"] == "POST" and head.content == b""
    assert requests.request(method, f"{server.url}/nope", timeout=5).status_code == 404
    assert post(server, {"queries": ["festival"]}).status_code == 200


def test_a_chunked_body_is_read(server: RetrievalServer) -> None:
    body = json.dumps({"queries": ["festival", "born"], "topk": 2}).encode()
    # requests sends a generator chunked, without Content-Length
    answer = requests.post(f"{server.url}/retrieve", data=(body[i : i + 7] for i in range(0, len(body), 7)), timeout=10)
    assert answer.status_code == 200 and [len(hits) for hits in answer.json()["result"]] == [2, 2]
    chunked = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(body[i : i + 9]), body[i : i + 9]) for i in range(0, len(body), 9))
    status, _, data = raw_exchange(server, b"POST /retrieve HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   + chunked + b"0\r\nX-Trailer: 1\r\n\r\n")  # fmt: skip
    assert status == 200 and len(json.loads(data)["result"]) == 2


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [(b"Transfer-Encoding: chunked", b"%x\r\n" % 20000, 413),  # above max_body_bytes, refused before reading
     (b"Transfer-Encoding: chunked", b"zz\r\n", 400),
     (b"Transfer-Encoding: chunked", b"+5\r\nabcde\r\n0\r\n\r\n", 400),
     (b"Transfer-Encoding: chunked", b"10\r\nabc", 400),  # cut short
     (b"Transfer-Encoding: gzip", b"", 501),
     (b"Transfer-Encoding: chunked\r\nContent-Length: 5", b"0\r\n\r\n", 400),
     (b"X-None: 1", b"", 411)],
)  # fmt: skip
def test_bad_framing_gets_an_answer(server: RetrievalServer, headers: bytes, body: bytes, status: int) -> None:
    got, _, data = raw_exchange(server, b"POST /retrieve HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n\r\n" + body,
                                close_write=True)  # fmt: skip
    assert got == status and "error" in json.loads(data)
    assert post(server, {"queries": ["festival"]}).status_code == 200


class Slow(Retriever):
    """A search of ``steps`` steps of ``step`` seconds, with a stop point before each (as between encoder batches)."""

    def __init__(self, steps: int = 200, step: float = 0.02) -> None:
        super().__init__()
        self.steps, self.step = steps, step
        self.done = 0
        self.searches = 0

    def _search(self, queries, k):
        self.searches += 1
        for _ in range(self.steps):
            raise_if_stopped()
            time.sleep(self.step)
            self.done += 1
        return [[] for _ in queries]


def wait_until_still(slow: Slow, quiet: float = 0.3, limit: float = 5.0) -> int:
    """Steps done once no step has been done for ``quiet`` seconds (or ``limit`` has passed)."""
    end = time.monotonic() + limit
    before = -1
    while slow.done != before and time.monotonic() < end:
        before = slow.done
        time.sleep(quiet)
    return slow.done


def test_the_search_stops_when_its_client_gives_up() -> None:
    slow = Slow()  # 4 s of work if it is not stopped
    srv = RetrievalServer(slow, port=0).start()
    try:
        client = HTTPRetriever(srv.url, timeout=0.5, max_retries=0)
        with pytest.raises(RetrievalError, match=r"after 1 attempt \(no complete answer within 0.5 s\)"):
            client.search(["a"], 1)
        assert wait_until_still(slow) < 60  # 25 steps in the client's 0.5 s, then a step or two
        assert requests.get(f"{srv.url}/health", timeout=5).status_code == 200
    finally:
        srv.shutdown()


def test_a_search_past_max_seconds_is_stopped_with_a_503() -> None:
    slow = Slow()
    srv = RetrievalServer(slow, port=0, limits=ServerLimits(max_seconds=0.3)).start()
    try:
        start = time.monotonic()
        response = requests.post(f"{srv.url}/retrieve", json={"queries": ["a"]}, timeout=10)
        assert response.status_code == 503 and "limit of 0.3 s" in response.json()["error"]
        assert time.monotonic() - start < 2 and wait_until_still(slow) < 30
    finally:
        srv.shutdown()


def test_the_encoder_stops_between_batches(dense_dir: Path) -> None:
    retriever = load_retriever(dense_dir)
    retriever.encoder.batch_size = 2
    checks = []

    def check() -> str | None:
        checks.append(1)
        return "enough" if len(checks) > 3 else None

    with stop_when(check), pytest.raises(SearchStopped, match="enough"):
        retriever.search([f"query {i}" for i in range(20)], 3)
    assert len(checks) == 4  # three batches encoded, stopped before the fourth
    assert len(retriever.search(["festival"], 3)[0]) == 3  # no check outside the block


@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_trickling_server_fails_within_the_deadline(where: str) -> None:
    # One byte every 0.2 s: a per-read timeout of 1 s would never fire.
    with TricklingServer(where, interval=0.2, max_bytes=50).running() as slow:
        client = HTTPRetriever(f"http://127.0.0.1:{slow.port}", timeout=1.0, max_retries=0)
        start = time.monotonic()
        with pytest.raises(RetrievalError, match=r"did not answer after 1 attempt \(no complete answer within 1 s\)"):
            client.search(["alpha"], 3)
        assert time.monotonic() - start < 2.5
        with pytest.raises(RetrievalError, match="health check .* no complete answer within 1 s"):
            client.health()
        assert time.monotonic() - start < 5


def test_a_request_past_its_deadline_is_asked_again_once_after_the_backoff() -> None:
    with TricklingServer("body", interval=0.2, max_bytes=50).running() as slow:
        client = HTTPRetriever(f"http://127.0.0.1:{slow.port}", timeout=0.5, max_retries=3, backoff=0.4)
        start = time.monotonic()
        with pytest.raises(RetrievalError, match=r"after 2 attempts \(no complete answer within 0.5 s\)"):
            client.search(["alpha"], 3)
        assert 1.4 <= time.monotonic() - start < 3  # 0.5 + 0.4 + 0.5
        assert slow.connections == 2


def test_a_500_is_asked_again_once_and_a_4xx_never() -> None:
    class Broken(Retriever):
        calls = 0

        def _search(self, queries, k):
            Broken.calls += 1
            raise OSError("disk gone")

    srv = RetrievalServer(Broken(), port=0).start()
    try:
        client = HTTPRetriever(srv.url, max_retries=3, backoff=0.01)
        with pytest.raises(RetrievalError, match=r"after 2 attempts \(HTTP 500: .*disk gone"):
            client.search(["a"], 1)
        assert Broken.calls == 2
        with pytest.raises(RetrievalError, match="refused the request: HTTP 400"):
            client._post({"queries": "a"}, 1)
    finally:
        srv.shutdown()


class FixedAnswer(BaseHTTPRequestHandler):
    """Answers every POST with ``body`` and status 200."""

    body = b""
    seen = 0

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b'{"result": [1]}', r"result\[0\] not a list"), (b'{"result": ["abc"]}', r"result\[0\] not a list"),
     (b'{"result": [["hit"]]}', r"result\[0\]\[0\] not a corpus row"),
     (b'{"result": [[{"document": "x", "score": 1}]]}', r"result\[0\]\[0\] not a corpus row"),
     (b'{"result": [[{"document": {"id": "1"}, "score": "high"}]]}', "not a number"),
     (b'{"result": []}', "without a 'result' list of 1 entries"), (b"[]", "without a 'result' list"),
     (b"<html>oops</html>", "invalid JSON"), (b"", "invalid JSON: an empty body")],
)  # fmt: skip
def test_a_malformed_answer_is_a_retrieval_error_quoting_the_body(body: bytes, reason: str) -> None:
    FixedAnswer.body, FixedAnswer.seen = body, 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FixedAnswer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        client = HTTPRetriever(f"http://127.0.0.1:{httpd.server_address[1]}", max_retries=2, backoff=0.01)
        with pytest.raises(RetrievalError, match=reason) as info:
            client.search(["alpha"], 3)
        message = str(info.value)
        assert "\n" not in message and (body.decode()[:10] in message if body else "empty body" in message)
        assert FixedAnswer.seen == 1  # the same answer would come again
    finally:
        httpd.shutdown()
        httpd.server_close()
