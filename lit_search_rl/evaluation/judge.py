"""An LLM judge: asks a model behind an OpenAI-compatible server whether a predicted answer is correct.

Exact match misses right answers written differently ("JFK" for "John F. Kennedy"); a judge
model reads the question, the golden answers and the prediction and answers yes or no. Any
server of the chat-completions API works (vLLM's ``vllm serve``, SGLang, a hosted API).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from lit_search_rl.http_retry import new_session, post_json

PROMPT = """You grade answers to questions. Decide whether the predicted answer means the same as one of the
reference answers (a different wording, alias or format of the same answer counts; a different or vaguer answer
does not).

Question: {question}
Reference answers: {answers}
Predicted answer: {prediction}

Is the predicted answer correct? Reply with one word: yes or no."""
"""The judge's instruction; ``{question}``, ``{answers}`` (joined by `` | ``) and ``{prediction}`` are filled in."""

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)  # reasoning models may think before the verdict
_RETRY_STATUS = {429}  # besides 502, 503 and 504; a 500 is asked again once


@dataclass
class JudgeConfig:
    """Where the judge model is served and how to talk to it."""

    model: str
    """Model name the server knows (the ``model`` of the request), for example ``Qwen/Qwen2.5-7B-Instruct``."""
    url: str = "http://127.0.0.1:8000/v1"
    """Base URL of the OpenAI-compatible API; requests go to ``{url}/chat/completions``."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (sent as a bearer token); unset for no key."""
    timeout: float = 60.0
    """Seconds for each request, from connecting to the last byte of the answer."""
    max_retries: int = 3
    """Further attempts after a connection error or a 429, 502, 503 or 504 answer (a 500 or a request past its
    deadline is asked again once at most)."""
    backoff: float = 1.0
    """Seconds before the first retry; doubled for each next one."""
    max_concurrency: int = 8
    """Requests in flight at once in ``judge_many``."""
    max_tokens: int = 16
    """Tokens the judge may write; raise it for models that think before answering."""

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise ValueError("judge.model is empty")
        if self.timeout <= 0 or self.backoff < 0:
            raise ValueError(f"judge.timeout must be positive and judge.backoff not negative "
                             f"(got {self.timeout}, {self.backoff})")  # fmt: skip
        for name in ("max_concurrency", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"judge.{name} must be at least 1 (got {getattr(self, name)})")
        if self.max_retries < 0:
            raise ValueError(f"judge.max_retries must be at least 0 (got {self.max_retries})")


def parse_verdict(text: str) -> bool | None:
    """True for a reply whose first word is ``yes``, False for ``no`` (any case, punctuation ignored), else None."""
    words = _THINK.sub(" ", text).split()
    first = words[0].strip(".,:;!*\"'`()[]").lower() if words else ""
    return {"yes": True, "no": False}.get(first)


class LLMJudge:
    """Judges predictions with a chat model; an unparseable verdict counts as incorrect and is counted.

    Args:
        config: the server, model and limits.
    """

    def __init__(self, config: JudgeConfig) -> None:
        self.config = config
        base = config.url.rstrip("/")
        base = base.removesuffix("/chat/completions")
        self.endpoint = f"{base}/chat/completions"
        self.headers = {"Content-Type": "application/json"}
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise ValueError(f"judge.api_key_env: environment variable {config.api_key_env} is not set")
            self.headers["Authorization"] = f"Bearer {key}"
        self.unparseable = 0
        """Replies that were neither yes nor no (each counted as incorrect)."""
        self.requests = 0
        """Verdicts asked for (retries not counted)."""
        self._lock = threading.Lock()
        self.session = new_session(pool_maxsize=config.max_concurrency)

    def judge(self, question: str, golden_answers: Sequence[str], prediction: str | None) -> bool:
        """Whether ``prediction`` answers ``question`` as one of ``golden_answers`` does; no prediction is False."""
        if prediction is None or not prediction.strip():
            return False
        prompt = PROMPT.format(question=question, answers=" | ".join(golden_answers), prediction=prediction.strip())
        reply = self._complete(prompt)
        verdict = parse_verdict(reply)
        with self._lock:
            self.requests += 1
            if verdict is None:
                self.unparseable += 1
        return bool(verdict)

    def judge_many(
        self,
        questions: Sequence[str],
        golden_answers: Sequence[Sequence[str]],
        predictions: Sequence[str | None],
    ) -> list[bool]:
        """Verdicts of many predictions, in order, with up to ``max_concurrency`` requests in flight."""
        if not len(questions) == len(golden_answers) == len(predictions):
            raise ValueError(f"{len(questions)} questions, {len(golden_answers)} answer lists and "
                             f"{len(predictions)} predictions; they must match")  # fmt: skip
        if not questions:
            return []
        workers = min(self.config.max_concurrency, len(questions))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(self.judge, questions, golden_answers, predictions))

    def _complete(self, prompt: str) -> str:
        payload = {
            "model": self.config.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0.0,
            "max_tokens": self.config.max_tokens,
        }
        return self._post(payload)

    def _post(self, payload: dict[str, Any]) -> str:
        return post_json(self.session, self.endpoint, payload, what="judge server", error=RuntimeError,
                         timeout=self.config.timeout, max_retries=self.config.max_retries,
                         backoff=self.config.backoff, headers=self.headers, retry_statuses=_RETRY_STATUS,
                         parse=_content)  # fmt: skip

    def close(self) -> None:
        """Close the connection pool."""
        self.session.close()


def _content(answer: Any) -> str:
    """The reply text of a chat-completions answer; ``ValueError`` when the answer has none."""
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        content = None
    if not isinstance(content, str):
        raise ValueError("without choices[0].message.content")
    return content
