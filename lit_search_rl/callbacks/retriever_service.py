"""A callback that owns the retriever's lifecycle: open or start it, check it, hand it over, stop it.

``RetrieverService`` gives the module a ready ``Retriever`` in ``setup`` (which Lightning calls
on callbacks before the module's own ``setup``, so the module does not open one itself) and
releases it in ``teardown`` and ``on_exception``. Three ways to get one:

- ``index=DIR`` (``mode="process"``): the index is opened in this process with ``load_retriever``.
- ``index=DIR, mode="subprocess"``: ``lit-search-rl serve-retriever --index DIR --port 0`` runs as
  a child process; the callback reads the URL it prints, checks ``GET /health`` and hands the
  module an ``HTTPRetriever``. A child that exits early fails ``setup`` with the end of its stderr.
- ``url=URL``: attach to a running Search-R1-compatible server, checked the same way before the
  first step. Search-R1's own server has no ``/health``; when ``/health`` answers 404, 405 or 501,
  one small ``POST /retrieve`` is the check instead.

Several processes (DDP): with ``url`` every rank attaches to the same server; with
``mode="process"`` every rank loads its own copy of the index (its memory times the ranks); with
``mode="subprocess"`` only local rank 0 of each node starts a server (bound to loopback) and the
other ranks of the node get its URL through an all-gather, so one server serves the whole node.
A start that fails on local rank 0 fails ``setup`` on every rank (nobody waits for a URL that
will not come). At the end of a normal run the ranks meet at a barrier before the servers stop,
so a slower rank does not lose its server mid-search.

The child does not outlive this process: ``teardown`` and ``on_exception`` stop it (SIGTERM,
then SIGKILL after ``stop_timeout`` seconds), a ``weakref.finalize`` stops it at normal
interpreter exit, and it shares this process's process group, so a Ctrl-C in the terminal or a
scheduler that signals the whole group reaches it too. When this process is killed with SIGKILL
none of that runs; on Linux the child asks the kernel for SIGTERM when its parent dies
(``prctl(PR_SET_PDEATHSIG)``), so it goes too. The kernel ties that signal to the thread that
started the child, so it is only asked for when ``setup`` runs in the main thread; elsewhere (and
on other systems) a SIGKILLed parent can leave the child serving until it is killed by hand.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import re
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import IO, Any, Literal

import requests
import torch.distributed as dist
from lightning import Callback, LightningModule, Trainer

from lit_search_rl.http_retry import PastDeadline, Unreachable, new_session, request
from lit_search_rl.retrieval.base import Retriever
from lit_search_rl.retrieval.http_client import retrieve_url

log = logging.getLogger(__name__)

DEFAULT_CACHE_SIZE = 10_000
STDERR_TAIL_LINES = 20
_URL_IN_LINE = re.compile(r"(https?://\S+/retrieve)\b")

# Run in the child before the server: ask for SIGTERM when the parent dies (Linux), then check the
# parent did not die before that took effect, then run the ordinary `lit-search-rl` entry point.
# argv: parent pid, "1" to ask for the death signal, then the `lit-search-rl` arguments.
_CHILD_BOOTSTRAP = """\
import os, signal, sys
parent, want_signal = int(sys.argv[1]), sys.argv[2] == "1"
if want_signal and sys.platform.startswith("linux"):
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        sys.exit("lit-search-rl serve-retriever: the training process exited before the server started")
from lit_search_rl.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _stop_process(popen: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; a no-op when it has already exited.

    Module-level and given only the ``Popen``, so the ``weakref.finalize`` that calls it at exit
    does not keep the callback alive.
    """
    if popen.poll() is None:
        popen.terminate()
        try:
            popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(timeout=timeout)


class _ServerProcess:
    """A ``lit-search-rl serve-retriever`` child: its output drained by threads, its URL, its stop."""

    def __init__(self, index: Path, cache_size: int, device: str | None, stop_timeout: float) -> None:
        self.index = index
        args = ["serve-retriever", "--index", str(index), "--host", "127.0.0.1", "--port", "0"]
        args += ["--cache_size", str(cache_size)]
        if device is not None:
            args += ["--device", device]
        want_signal = threading.current_thread() is threading.main_thread()
        self.command = [sys.executable, "-c", _CHILD_BOOTSTRAP, str(os.getpid()), "1" if want_signal else "0", *args]
        self.popen = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._finalizer = weakref.finalize(self, _stop_process, self.popen, stop_timeout)
        # Both pipes are read for the child's whole life: a full pipe would block its writes.
        self.stdout_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._urls: queue.Queue[str] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._drain, args=(self.popen.stdout, self.stdout_tail, True), daemon=True),
            threading.Thread(target=self._drain, args=(self.popen.stderr, self.stderr_tail, False), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _drain(self, stream: IO[str], tail: collections.deque[str], is_stdout: bool) -> None:
        # Reads until the child exits (end of file), then closes the pipe: the only reader closes it.
        with stream:
            for line in stream:
                line = line.rstrip("\n")
                tail.append(line)
                if is_stdout and (match := _URL_IN_LINE.search(line)):
                    self._urls.put(match.group(1))
                log.debug("retrieval server %d: %s", self.popen.pid, line)

    def tail(self) -> str:
        """The last lines the child wrote to stderr (stdout when stderr is empty), indented."""
        for reader in self._readers:
            reader.join(timeout=2)  # after an exit, so the tail holds the child's last words
        lines = list(self.stderr_tail) or list(self.stdout_tail) or ["(nothing)"]
        return "\n".join(f"  | {line}" for line in lines)

    def wait_for_url(self, timeout: float) -> str:
        """The ``/retrieve`` URL the child prints once it listens; an error if it exits or is silent too long."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._urls.get(timeout=0.05)
            except queue.Empty:
                pass
            code = self.popen.poll()
            if code is not None:
                try:
                    return self._urls.get(timeout=1)  # printed just before exiting: exit is reported on health
                except queue.Empty:
                    raise RuntimeError(self.exited_message(code)) from None
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"RetrieverService: the retrieval server for index {self.index} did not print its URL within "
                    f"{timeout:g}s (startup_timeout); it was stopped. Its stderr ended with:\n{self.tail()}"
                )

    def exited_message(self, code: int) -> str:
        return (
            f"RetrieverService: the retrieval server for index {self.index} exited with code {code} before serving. "
            f"Its stderr ended with:\n{self.tail()}"
        )

    def stop(self) -> None:
        """Stop the child; safe to call more than once."""
        self._finalizer()


def _check_health(
    base: str,
    retries: int,
    backoff: float,
    timeout: float,
    server: _ServerProcess | None = None,
) -> dict[str, Any]:
    """``GET base/health`` until it answers 200, at most ``retries + 1`` times; the answer, or an error.

    Without ``/health`` (Search-R1's own server), one ``POST /retrieve`` of one query must answer 200.
    With ``server``, its early exit ends the wait at once with its stderr.
    """
    # Each probe has a total deadline (connect to last byte), so a server that trickles its answer
    # cannot stall setup; connecting alone gets at most http_retry.CONNECT_TIMEOUT.
    last = ""
    with new_session(pool_maxsize=1) as session:
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(min(backoff * 2 ** (attempt - 1), 5.0))
            if server is not None and (code := server.popen.poll()) is not None:
                raise RuntimeError(server.exited_message(code))
            try:
                response = request(session, "GET", f"{base}/health", timeout)
                if response.status_code == 200:
                    answer = response.json()
                    return answer if isinstance(answer, dict) else {"status": "ok", "health": answer}
                if response.status_code in (404, 405, 501):
                    probe = {"queries": ["health check"], "topk": 1, "return_scores": True}
                    response = request(session, "POST", f"{base}/retrieve", timeout, json=probe)
                    if response.status_code == 200:
                        answer = response.json()
                        if isinstance(answer, dict) and isinstance(answer.get("result"), list):
                            return {"status": "ok", "health": "no /health; POST /retrieve answered"}
                        raise ValueError("POST /retrieve answered without a 'result' list")
                last = f"HTTP {response.status_code} from {response.request.method} {response.url}: "
                last += _one_line(response.text[:200])
            except PastDeadline:
                last = f"no complete answer within {timeout:g} s"
            except (Unreachable, requests.RequestException, ValueError) as e:
                last = f"{type(e).__name__}: {_one_line(str(e))[:300]}"
    raise ConnectionError(
        f"RetrieverService: the retrieval server at {base} is not healthy after {retries + 1} attempts ({last})"
    )


def _gather_from_ranks(trainer: Trainer, item: tuple) -> list[tuple]:
    """``item`` of every rank, in rank order; just ``[item]`` in a single process.

    Strategies without ``torch.distributed`` get rank 0's item only (one node assumed).
    """
    if trainer.world_size <= 1:
        return [item]
    if dist.is_available() and dist.is_initialized():
        items: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(items, item)
        return items
    return [trainer.strategy.broadcast(item, src=0)]


class RetrieverService(Callback):
    """Opens, starts or attaches to the retriever in ``setup``, hands it to the module, stops it at the end.

    Give exactly one of ``index`` and ``url``. The module gets the retriever as ``pl_module.retriever``
    before its own ``setup`` runs; ``teardown`` and ``on_exception`` close it and stop any server
    this callback started.

    Args:
        index: Index folder (``lit-search-rl index``) to open in this process (``mode="process"``) or to
            serve from a child process (``mode="subprocess"``).
        url: URL of a running Search-R1-compatible retrieval server (``http://host:port`` or ``.../retrieve``).
        mode: With ``index``: ``process`` opens it here (one copy per rank); ``subprocess`` runs
            ``lit-search-rl serve-retriever`` on local rank 0 of each node and every rank of the node talks
            to it over HTTP. Not used with ``url``.
        cache_size: Recent (query, k) answers kept; 0 for none. With ``index``: in front of the index
            (process) or in the server, shared by the node's ranks (subprocess); default 10000. With
            ``url``: a cache in front of the client; default none (the server keeps its own).
        device: Encoder device for dense indexes (``cpu``, ``cuda``); the backend's default when unset.
        startup_timeout: Seconds the server child may take to load the index and print its URL.
        health_retries: Further ``GET /health`` attempts after a failed one before ``setup`` fails.
        health_backoff: Seconds before the first health retry; doubled for each next one (at most 5).
        request_timeout: Seconds each request to the server may take, connecting to the last byte of its answer.
        stop_timeout: Seconds the server child gets to exit after SIGTERM before it is killed.
    """

    def __init__(
        self,
        index: str | None = None,
        url: str | None = None,
        mode: Literal["process", "subprocess"] = "process",
        cache_size: int | None = None,
        device: str | None = None,
        startup_timeout: float = 600.0,
        health_retries: int = 4,
        health_backoff: float = 0.25,
        request_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        if (index is None) == (url is None):
            raise ValueError("RetrieverService needs exactly one of index (an index folder) and url (a server)")
        if mode not in ("process", "subprocess"):
            raise ValueError(f"RetrieverService: mode must be 'process' or 'subprocess' (got {mode!r})")
        if url is not None:
            if mode == "subprocess":
                raise ValueError(
                    "RetrieverService: mode='subprocess' starts a server from an index; give index, not url"
                )
            if not str(url).startswith(("http://", "https://")):
                raise ValueError(f"RetrieverService: url must start with http:// or https:// (got {url!r})")
        if index is not None and not Path(index).expanduser().is_dir():
            raise FileNotFoundError(f"RetrieverService: index folder {index} does not exist or is not a folder")
        if cache_size is not None and cache_size < 0:
            raise ValueError(f"RetrieverService: cache_size must not be negative (got {cache_size})")
        positive = {
            "startup_timeout": startup_timeout,
            "request_timeout": request_timeout,
            "stop_timeout": stop_timeout,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"RetrieverService: {name} must be positive (got {value})")
        if health_retries < 0 or health_backoff < 0:
            raise ValueError(
                f"RetrieverService: health_retries and health_backoff must not be negative "
                f"(got {health_retries}, {health_backoff})"
            )
        self.index = None if index is None else Path(index).expanduser().resolve()
        self.mode = mode
        self.cache_size = cache_size
        self.device = device
        self.startup_timeout = startup_timeout
        self.health_retries = health_retries
        self.health_backoff = health_backoff
        self.request_timeout = request_timeout
        self.stop_timeout = stop_timeout
        self._attach_url = None if url is None else retrieve_url(url)
        self._served_url: str | None = None
        self._server: _ServerProcess | None = None
        self._retriever: Retriever | None = None
        self.health: dict[str, Any] | None = None
        """The server's ``/health`` answer from the last ``setup`` (None in process mode)."""

    @property
    def url(self) -> str | None:
        """The ``/retrieve`` URL the module's retriever talks to: the given one, or the child's once started.

        None in process mode and, for a child server, before ``setup`` and after it is stopped.
        """
        return self._attach_url or self._served_url

    @property
    def server_pid(self) -> int | None:
        """Process id of the server child this callback started (local rank 0, subprocess mode), else None."""
        return None if self._server is None else self._server.pid

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._retriever is not None:  # already set up (a second stage before teardown): keep it
            pl_module.retriever = self._retriever
            return
        try:
            retriever = self._open(trainer)
        except BaseException:
            self._stop()
            raise
        if getattr(pl_module, "retriever", None) is not None:
            log.warning("RetrieverService replaces the retriever %s the module already held", type(pl_module.retriever))
        self._retriever = retriever
        pl_module.retriever = retriever

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._retriever is not None and self.mode == "subprocess" and trainer.world_size > 1:
            # Other ranks of the node may still be finishing a search; every rank reaches teardown on a
            # normal end (after an exception Lightning calls on_exception instead), so none waits here forever.
            trainer.strategy.barrier("RetrieverService.teardown")
        self._release(pl_module)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        # Lightning skips teardown after an exception, so this is the only chance to stop the child.
        self._release(pl_module)

    def _open(self, trainer: Trainer) -> Retriever:
        from lit_search_rl.retrieval.cache import CachedRetriever
        from lit_search_rl.retrieval.http_client import HTTPRetriever

        if self.index is not None and self.mode == "process":
            from lit_search_rl.retrieval.index import load_retriever

            retriever = load_retriever(self.index, device=self.device)
            size = DEFAULT_CACHE_SIZE if self.cache_size is None else self.cache_size
            log.info("RetrieverService: opened index %s in process", self.index)
            return CachedRetriever(retriever, size) if size > 0 else retriever
        if self.index is not None:
            self._served_url = self._start_node_server(trainer)
        url = self.url
        assert url is not None
        base = url[: -len("/retrieve")]
        self.health = _check_health(base, self.health_retries, self.health_backoff, self.request_timeout, self._server)
        log.info("RetrieverService: retrieval server at %s is healthy: %s", url, self.health)
        retriever: Retriever = HTTPRetriever(url, timeout=self.request_timeout)
        if self._attach_url is not None and self.cache_size:
            retriever = CachedRetriever(retriever, self.cache_size)
        return retriever

    def _start_node_server(self, trainer: Trainer) -> str:
        """Start the server on local rank 0 and give every rank its node's URL."""
        url = error = None
        failure: BaseException | None = None
        if trainer.local_rank == 0:
            assert self.index is not None
            size = DEFAULT_CACHE_SIZE if self.cache_size is None else self.cache_size
            try:
                self._server = _ServerProcess(self.index, size, self.device, self.stop_timeout)
                url = self._server.wait_for_url(self.startup_timeout)
                log.info("RetrieverService: serving %s at %s (pid %d)", self.index, url, self._server.pid)
            except Exception as e:  # shared with the other ranks before it is raised, so none waits forever
                failure, error = e, _one_line(str(e))[:500]
        entries = _gather_from_ranks(trainer, (trainer.node_rank, trainer.local_rank, url, error))
        if failure is not None:
            raise failure
        for node, local, _, message in entries:
            if message is not None:
                raise RuntimeError(f"RetrieverService: the retrieval server of node {node} (local rank {local}) "
                                   f"failed to start: {message}")  # fmt: skip
        for node, local, served, _ in entries:
            if node == trainer.node_rank and local == 0 and served is not None:
                return served
        raise RuntimeError(
            f"RetrieverService: no retrieval server URL came from local rank 0 of node {trainer.node_rank}"
        )

    def _release(self, pl_module: LightningModule) -> None:
        """Close the retriever this callback handed out and stop its server; idempotent."""
        if self._retriever is not None:
            if getattr(pl_module, "retriever", None) is self._retriever:
                pl_module.retriever = None  # the module's teardown then has nothing to close twice
            self._retriever.close()
            self._retriever = None
        self._stop()

    def _stop(self) -> None:
        if self._server is not None:
            pid = self._server.pid
            self._server.stop()
            log.info("RetrieverService: stopped the retrieval server (pid %d)", pid)
            self._server = None
        self._served_url = None
