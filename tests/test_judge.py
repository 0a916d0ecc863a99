"""The LLM judge against a real loopback server that speaks the OpenAI chat-completions API."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lit_search_rl.evaluation.judge import JudgeConfig, LLMJudge, parse_verdict
from tests.http_doubles import TricklingServer

MODEL = "judge-model"


class ChatServer(ThreadingHTTPServer):
    """A chat-completions server whose judge says yes when the prediction is inside a reference answer."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ChatHandler)
        self.statuses: list[int] = []  # answered, in order, before any real verdict
        self.bodies: list[bytes] = []  # raw 200 answers, in order, before any real verdict
        self.requests: list[dict] = []
        self.headers_seen: list[dict] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append(payload)
            self.server.headers_seen.append(dict(self.headers))
            status = self.server.statuses.pop(0) if self.server.statuses else 200
            raw = self.server.bodies.pop(0) if self.server.bodies and status == 200 else None
        if self.path != "/v1/chat/completions":
            return self.reply(404, {"error": {"message": f"no route {self.path}"}})
        if status != 200:
            return self.reply(status, {"error": {"message": "overloaded\nplease retry"}})
        if raw is not None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            return self.wfile.write(raw)
        if payload.get("model") != MODEL:
            return self.reply(404, {"error": {"message": f"The model `{payload.get('model')}` does not exist."}})
        messages = payload.get("messages")
        if not (isinstance(messages, list) and messages and messages[-1].get("role") == "user"):
            return self.reply(400, {"error": {"message": "messages must end with a user message"}})
        prompt = messages[-1]["content"]
        prediction = re.search(r"Predicted answer: (.*)", prompt).group(1).strip()
        answers = re.search(r"Reference answers: (.*)", prompt).group(1).lower()
        if prediction == "mumble":
            content = "Maybe, it depends."
        elif prediction == "thinker":
            content = "<think>No, wait: yes.</think>\nYES"
        else:
            content = "Yes." if prediction.lower() in answers else "no"
        self.reply(200, {"id": "x", "object": "chat.completion", "model": MODEL,
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                      "finish_reason": "stop"}]})  # fmt: skip


@pytest.fixture
def server() -> Iterator[ChatServer]:
    srv = ChatServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def make_judge(url: str, **overrides) -> LLMJudge:
    settings = {"model": MODEL, "url": url, "timeout": 5.0, "max_retries": 2, "backoff": 0.01, **overrides}
    return LLMJudge(JudgeConfig(**settings))


def test_verdicts_and_the_request(server: ChatServer) -> None:
    judge = make_judge(server.url)
    assert judge.judge("Who wrote Hamlet?", ["William Shakespeare", "Shakespeare"], "shakespeare") is True
    assert judge.judge("Who wrote Hamlet?", ["William Shakespeare"], "Christopher Marlowe") is False
    request = server.requests[0]
    assert request["model"] == MODEL and request["temperature"] == 0 and request["max_tokens"] == 16
    prompt = request["messages"][0]["content"]
    assert "Who wrote Hamlet?" in prompt and "William Shakespeare | Shakespeare" in prompt and "yes or no" in prompt
    assert "Authorization" not in server.headers_seen[0]
    assert judge.requests == 2 and judge.unparseable == 0


def test_no_prediction_is_false_without_a_request(server: ChatServer) -> None:
    judge = make_judge(server.url)
    assert judge.judge("q", ["a"], None) is False and judge.judge("q", ["a"], "  ") is False
    assert server.requests == []


def test_unparseable_verdicts_count_as_incorrect(server: ChatServer) -> None:
    judge = make_judge(server.url + "/chat/completions")  # the full endpoint is accepted too
    assert judge.judge("q", ["a"], "mumble") is False
    assert judge.judge("q", ["a"], "thinker") is True  # the thinking block is not the verdict
    assert judge.unparseable == 1


def test_judge_many_keeps_order(server: ChatServer) -> None:
    judge = make_judge(server.url, max_concurrency=4)
    predictions = [f"ans{i}" if i % 3 else "wrong" for i in range(20)] + [None]
    verdicts = judge.judge_many(["q"] * 21, [[f"ans{i}"] for i in range(21)], predictions)
    assert verdicts == [bool(i % 3) for i in range(20)] + [False]
    assert len(server.requests) == 20
    with pytest.raises(ValueError, match="must match"):
        judge.judge_many(["q"], [], [None])


def test_retries_after_503_and_429(server: ChatServer) -> None:
    server.statuses = [503, 429]
    judge = make_judge(server.url)
    assert judge.judge("q", ["Paris"], "Paris") is True
    assert len(server.requests) == 3


@pytest.mark.parametrize(("status", "attempts"), [(502, 3), (503, 3), (504, 3), (500, 2)])
def test_a_failing_server_gives_one_clear_error_after_bounded_retries(
    server: ChatServer, status: int, attempts: int
) -> None:
    # A busy server (502-504) is asked again up to max_retries times; an internal error (500) once only.
    server.statuses = [status] * 10
    judge = make_judge(server.url)
    start = time.monotonic()
    with pytest.raises(RuntimeError) as info:
        judge.judge("q", ["a"], "a")
    assert time.monotonic() - start < 2
    message = str(info.value)
    assert f"judge server {server.url}/chat/completions did not answer after {attempts} attempts (HTTP {status}" in (
        message
    )
    assert "\n" not in message and len(server.requests) == attempts


def test_a_trickling_server_fails_within_the_deadline() -> None:
    # One byte every 0.2 s: a per-read timeout of 1 s would never fire.
    with TricklingServer("body", interval=0.2, max_bytes=50).running() as slow:
        judge = make_judge(f"http://127.0.0.1:{slow.port}/v1", timeout=1.0, max_retries=0)
        start = time.monotonic()
        with pytest.raises(RuntimeError, match=r"after 1 attempt \(no complete answer within 1 s\)"):
            judge.judge("q", ["a"], "a")
        assert time.monotonic() - start < 2.5


@pytest.mark.parametrize(
    "body", [b'{"choices": []}', b'{"choices": [{"message": {"content": null}}]}', b'["yes"]', b"<html>busy</html>"]
)
def test_a_malformed_answer_is_one_error_quoting_the_body(server: ChatServer, body: bytes) -> None:
    server.bodies = [body]
    judge = make_judge(server.url)
    with pytest.raises(RuntimeError, match=r"judge server .* answered (without choices|with invalid JSON)") as info:
        judge.judge("q", ["a"], "a")
    assert body.decode()[:12] in str(info.value) and len(server.requests) == 1


def test_connection_refused_is_a_clear_error() -> None:
    with socket.socket() as s:  # a port nobody listens on once the socket closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = make_judge(f"http://127.0.0.1:{port}/v1")
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=rf"judge server http://127\.0\.0\.1:{port}/v1/chat/completions did not "
                       r"answer after 3 attempts \(ConnectionError.*Connection refused\)$"):  # fmt: skip
        judge.judge("q", ["a"], "a")
    assert time.monotonic() - start < 5


def test_a_refused_request_is_not_retried(server: ChatServer) -> None:
    judge = make_judge(server.url, model="other-model")
    with pytest.raises(RuntimeError, match=r"refused the request: HTTP 404 .*other-model"):
        judge.judge("q", ["a"], "a")
    assert len(server.requests) == 1


def test_api_key_from_the_environment(server: ChatServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUDGE_TEST_KEY", "s3cret")
    assert make_judge(server.url, api_key_env="JUDGE_TEST_KEY").judge("q", ["a"], "a") is True
    assert server.headers_seen[0]["Authorization"] == "Bearer s3cret"
    monkeypatch.delenv("JUDGE_TEST_KEY")
    with pytest.raises(ValueError, match="environment variable JUDGE_TEST_KEY is not set"):
        make_judge(server.url, api_key_env="JUDGE_TEST_KEY")


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [("yes", True), ("Yes.", True), ("NO", False), ("**No**, it differs", False), ("", None), ("Correct", None),
     ("<think>\nhmm no\n</think> yes", True), ("yesterday", None)],
)  # fmt: skip
def test_parse_verdict(reply: str, verdict: bool | None) -> None:
    assert parse_verdict(reply) is verdict


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"model": " "}, "judge.model is empty"), ({"timeout": 0}, "timeout must be positive"),
     ({"max_retries": -1}, "max_retries must be at least 0"), ({"max_concurrency": 0}, "max_concurrency")],
)  # fmt: skip
def test_config_errors(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        JudgeConfig(**{"model": MODEL, **overrides})
