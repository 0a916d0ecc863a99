"""The Search-R1 retrieval API over loopback HTTP: our server, our client, and each against the other side."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from lit_search_rl.retrieval.base import Document, RetrievalError, Retriever
from lit_search_rl.retrieval.http_client import HTTPRetriever
from lit_search_rl.retrieval.index import load_retriever
from lit_search_rl.retrieval.server import RetrievalServer, ServerLimits


@pytest.fixture(scope="module")
def server(bm25_dir: Path):
    srv = RetrievalServer(load_retriever(bm25_dir), port=0, limits=ServerLimits(max_queries=8, max_topk=5,
                          max_body_bytes=4096), info={"kind": "bm25"}).start()  # fmt: skip
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
        (b'{"queries": ["a"], "topk": "3"}', 400),
        (b'{"queries": ["a"], "return_scores": "yes"}', 400),
        (json.dumps({"queries": ["a"] * 9}).encode(), 413),
        (json.dumps({"queries": ["a" * 5000]}).encode(), 413),
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


def test_our_client_against_our_server_matches_in_process(server: RetrievalServer, bm25_dir: Path) -> None:
    client = HTTPRetriever(server.url, max_queries_per_request=3)
    queries = ["festival", "", "born", "company", "film", "band", "capital"]
    remote = client.search(queries, 3)
    local = load_retriever(bm25_dir).search(queries, 3)
    assert remote == local  # ids, titles, texts and scores
    assert client.health()["status"] == "ok"
    client.close()


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
    with pytest.raises(RetrievalError, match="did not answer after 3 attempts .*ConnectionError"):
        client.search(["alpha"], 3)
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
