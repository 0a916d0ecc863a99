"""The retrieval server as a child process: start ``lit-search-rl serve-retriever``, read its URL, check
its health, stop it.

Used by the ``RetrieverService`` callback (``mode="subprocess"``). The child does not outlive
this process: ``stop`` sends SIGTERM, then SIGKILL after a timeout; a ``weakref.finalize`` stops
it at normal interpreter exit; on Linux it asks the kernel for SIGTERM when its parent dies.
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
from typing import IO, Any

import requests

from lit_search_rl.http_retry import PastDeadline, Unreachable, new_session, request

log = logging.getLogger(__name__)

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


def one_line(text: str) -> str:
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


class ServerProcess:
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


def check_health(
    base: str,
    retries: int,
    backoff: float,
    timeout: float,
    server: ServerProcess | None = None,
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
                last += one_line(response.text[:200])
            except PastDeadline:
                last = f"no complete answer within {timeout:g} s"
            except (Unreachable, requests.RequestException, ValueError) as e:
                last = f"{type(e).__name__}: {one_line(str(e))[:300]}"
    raise ConnectionError(
        f"RetrieverService: the retrieval server at {base} is not healthy after {retries + 1} attempts ({last})"
    )
