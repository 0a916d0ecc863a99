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

import logging
from pathlib import Path
from typing import Any, Literal

import torch.distributed as dist
from lightning import Callback, LightningModule, Trainer

from lit_search_rl.retrieval.base import Retriever
from lit_search_rl.retrieval.http_client import retrieve_url
from lit_search_rl.retrieval.open import DEFAULT_CACHE_SIZE, open_retriever
from lit_search_rl.retrieval.server_process import ServerProcess, check_health, one_line

log = logging.getLogger(__name__)


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
        self._server: ServerProcess | None = None
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
        if self.index is not None and self.mode == "process":
            retriever = open_retriever(self.index, self.cache_size, self.device)
            log.info("RetrieverService: opened index %s in process", self.index)
            return retriever
        if self.index is not None:
            self._served_url = self._start_node_server(trainer)
        url = self.url
        assert url is not None
        base = url[: -len("/retrieve")]
        self.health = check_health(base, self.health_retries, self.health_backoff, self.request_timeout, self._server)
        log.info("RetrieverService: retrieval server at %s is healthy: %s", url, self.health)
        # A server this callback started keeps the cache itself, shared by the node's ranks.
        cache_size = self.cache_size if self._attach_url is not None else 0
        return open_retriever(url, cache_size, timeout=self.request_timeout)

    def _start_node_server(self, trainer: Trainer) -> str:
        """Start the server on local rank 0 and give every rank its node's URL."""
        url = error = None
        failure: BaseException | None = None
        if trainer.local_rank == 0:
            assert self.index is not None
            size = DEFAULT_CACHE_SIZE if self.cache_size is None else self.cache_size
            try:
                self._server = ServerProcess(self.index, size, self.device, self.stop_timeout)
                url = self._server.wait_for_url(self.startup_timeout)
                log.info("RetrieverService: serving %s at %s (pid %d)", self.index, url, self._server.pid)
            except Exception as e:  # shared with the other ranks before it is raised, so none waits forever
                failure, error = e, one_line(str(e))[:500]
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
