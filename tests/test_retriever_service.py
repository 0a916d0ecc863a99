"""RetrieverService: opens, starts or attaches to a retriever, checks it, hands it to the module, stops it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import pytest
from lightning import LightningModule, Trainer

from lit_search_rl.callbacks import retriever_service
from lit_search_rl.callbacks.retriever_service import RetrieverService
from lit_search_rl.retrieval.cache import CachedRetriever
from lit_search_rl.retrieval.http_client import HTTPRetriever
from lit_search_rl.retrieval.index import load_retriever
from lit_search_rl.retrieval.server import RetrievalServer
from tests.http_doubles import TricklingServer

QUERIES = ["festival", "born", "company"]


class SearchModule(LightningModule):
    """The one thing the callback touches: a ``retriever`` attribute, None until set up."""

    def __init__(self) -> None:
        super().__init__()
        self.retriever = None


@pytest.fixture(scope="module")
def trainer() -> Trainer:
    return Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False)  # fmt: skip


@pytest.fixture(scope="module")
def expected(bm25_dir: Path) -> list[list[str]]:
    """Document ids of QUERIES from the index opened in this process."""
    return [[d.id for d in docs] for docs in load_retriever(bm25_dir).search(QUERIES, 3)]


def ids(module: SearchModule) -> list[list[str]]:
    return [[d.id for d in docs] for docs in module.retriever.search(QUERIES, 3)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_constructor_rejects_bad_arguments(bm25_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="RetrieverService needs exactly one of index"):
        RetrieverService()
    with pytest.raises(ValueError, match="RetrieverService needs exactly one of index"):
        RetrieverService(index=str(bm25_dir), url="http://127.0.0.1:1")
    with pytest.raises(FileNotFoundError, match=f"RetrieverService: index folder {tmp_path / 'nope'}"):
        RetrieverService(index=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="mode='subprocess'.*give index, not url"):
        RetrieverService(url="http://127.0.0.1:1", mode="subprocess")
    with pytest.raises(ValueError, match="url must start with http"):
        RetrieverService(url="127.0.0.1:8000")
    with pytest.raises(ValueError, match="startup_timeout must be positive"):
        RetrieverService(index=str(bm25_dir), startup_timeout=0)


def test_process_mode_hands_the_module_a_working_retriever(trainer: Trainer, bm25_dir: Path, expected) -> None:
    service, module = RetrieverService(index=str(bm25_dir)), SearchModule()
    service.setup(trainer, module, "fit")
    assert isinstance(module.retriever, CachedRetriever) and service.url is None and service.server_pid is None
    assert ids(module) == expected
    service.teardown(trainer, module, "fit")
    assert module.retriever is None
    service.teardown(trainer, module, "fit")  # idempotent


def test_subprocess_mode_serves_checks_health_and_stops_the_child(trainer: Trainer, bm25_dir: Path, expected) -> None:
    service, module = RetrieverService(index=str(bm25_dir), mode="subprocess"), SearchModule()
    service.setup(trainer, module, "fit")
    pid = service.server_pid
    try:
        assert pid is not None and alive(pid) and pid != os.getpid()
        assert service.url.startswith("http://127.0.0.1:") and service.url.endswith("/retrieve")
        assert service.health["status"] == "ok" and service.health["kind"] == "bm25"
        assert isinstance(module.retriever, HTTPRetriever) and module.retriever.url == service.url
        assert ids(module) == expected
        url = service.url
    finally:
        service.teardown(trainer, module, "fit")
    assert not alive(pid) and service.server_pid is None and service.url is None and module.retriever is None
    with pytest.raises(OSError):  # nothing listens there any more
        socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1].split("/")[0])), timeout=2).close()
    service.teardown(trainer, module, "fit")  # idempotent


def test_on_exception_stops_the_child(trainer: Trainer, bm25_dir: Path) -> None:
    service, module = RetrieverService(index=str(bm25_dir), mode="subprocess"), SearchModule()
    service.setup(trainer, module, "fit")
    pid = service.server_pid
    service.on_exception(trainer, module, RuntimeError("a step failed"))
    assert not alive(pid) and module.retriever is None and service.server_pid is None
    service.on_exception(trainer, module, RuntimeError("again"))  # idempotent


def test_a_broken_index_fails_setup_with_the_end_of_the_child_stderr(
    trainer: Trainer, bm25_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(bm25_dir, broken)
    shutil.rmtree(broken / "bm25")  # index.json says bm25, but its files are gone
    service, module = RetrieverService(index=str(broken), mode="subprocess"), SearchModule()
    with pytest.raises(RuntimeError, match="exited with code 2 before serving") as failure:
        service.setup(trainer, module, "fit")
    message = str(failure.value)
    assert str(broken) in message.splitlines()[0]
    assert "serve-retriever: error:" in message and "params.index.json" in message  # the child's own words
    assert service.server_pid is None and module.retriever is None


def test_a_server_that_does_not_start_in_time_is_stopped(trainer: Trainer, bm25_dir: Path) -> None:
    service = RetrieverService(index=str(bm25_dir), mode="subprocess", startup_timeout=0.01)
    with pytest.raises(RuntimeError, match=r"did not print its URL within 0.01s \(startup_timeout\)"):
        service.setup(trainer, SearchModule(), "fit")
    assert service.server_pid is None


def test_attach_to_a_running_server(trainer: Trainer, bm25_dir: Path, expected) -> None:
    server = RetrievalServer(load_retriever(bm25_dir), port=0, info={"kind": "bm25"}).start()
    try:
        service, module = RetrieverService(url=server.url), SearchModule()
        assert service.url == f"{server.url}/retrieve"
        service.setup(trainer, module, "fit")
        assert isinstance(module.retriever, HTTPRetriever) and service.health == {"status": "ok", "kind": "bm25"}
        assert ids(module) == expected
        service.teardown(trainer, module, "fit")
        assert module.retriever is None and service.server_pid is None
        assert still_serves(server)  # attaching never stops someone else's server
    finally:
        server.shutdown()


def still_serves(server: RetrievalServer) -> bool:
    client = HTTPRetriever(server.url)
    try:
        return bool(client.search(["festival"], 1)[0])
    finally:
        client.close()


class SearchR1Like(BaseHTTPRequestHandler):
    """Only ``POST /retrieve``, as Search-R1's server: ``GET /health`` gets the standard library's 501."""

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        hits = [[{"document": {"id": "7", "contents": '"Lisbon"\nA city.'}, "score": 1.0}] for _ in body["queries"]]
        data = json.dumps({"result": hits}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def test_attach_to_a_server_without_health_endpoint(trainer: Trainer) -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), SearchR1Like)
    Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        service, module = (
            RetrieverService(url=f"http://127.0.0.1:{httpd.server_address[1]}", cache_size=8),
            SearchModule(),
        )
        service.setup(trainer, module, "fit")
        assert isinstance(module.retriever, CachedRetriever)  # a cache size given with url: a client-side cache
        assert module.retriever.search(["capital"], 1)[0][0].title == "Lisbon"
        service.teardown(trainer, module, "fit")
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_attaching_to_a_closed_port_fails_clearly_and_quickly(trainer: Trainer) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    service, module = RetrieverService(url=url), SearchModule()
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=f"retrieval server at {url} is not healthy after 5 attempts"):
        service.setup(trainer, module, "fit")
    assert time.monotonic() - start < 10
    assert module.retriever is None


def test_a_trickling_server_fails_the_health_check_within_the_deadline(trainer: Trainer) -> None:
    # One byte every 0.2 s: a per-read timeout would wait for all of them; the deadline per probe does not.
    with TricklingServer("headers", interval=0.2, max_bytes=50).running() as slow:
        url = f"http://127.0.0.1:{slow.port}"
        service = RetrieverService(url=url, health_retries=1, health_backoff=0.0, request_timeout=1.0)
        start = time.monotonic()
        with pytest.raises(ConnectionError, match=r"not healthy after 2 attempts \(no complete answer within 1 s\)"):
            service.setup(trainer, SearchModule(), "fit")
        assert time.monotonic() - start < 4.5


class FakeTrainer:
    """What the server start reads of a trainer, for a rank other than local rank 0 of a two-rank job."""

    world_size, node_rank, local_rank = 2, 0, 1


def test_other_ranks_use_the_url_of_their_node_local_rank_0(monkeypatch: pytest.MonkeyPatch, bm25_dir: Path) -> None:
    sent = []

    def gather(trainer, item):
        sent.append(item)
        return [(0, 0, "http://127.0.0.1:1111/retrieve", None), item, (1, 0, "http://10.0.0.2:2222/retrieve", None)]

    monkeypatch.setattr(retriever_service, "_gather_from_ranks", gather)
    service = RetrieverService(index=str(bm25_dir), mode="subprocess")
    assert service._start_node_server(FakeTrainer()) == "http://127.0.0.1:1111/retrieve"
    assert sent == [(0, 1, None, None)] and service.server_pid is None  # this rank started nothing


def test_a_failed_start_on_local_rank_0_fails_every_rank(monkeypatch: pytest.MonkeyPatch, bm25_dir: Path) -> None:
    monkeypatch.setattr(retriever_service, "_gather_from_ranks",
                        lambda trainer, item: [(0, 0, None, "exited with code 2 before serving"), item])  # fmt: skip
    service = RetrieverService(index=str(bm25_dir), mode="subprocess")
    with pytest.raises(RuntimeError, match=r"server of node 0 \(local rank 0\) failed to start: exited with code 2"):
        service._start_node_server(FakeTrainer())
