"""The agent loop in worker processes: a step's rollouts generated on several CPU cores at once.

A decode step of a small model is mostly Python and small kernels on one core, which neither a second
OpenMP thread (it waits at every kernel's barrier) nor a second Python thread (the interpreter lock)
can share. Worker processes can: each runs the whole agent loop (``AgentLoop`` over its own
``TorchEngine``, and the retriever) on a share of the step's questions.

- Each worker runs its share from the first turn to the last, so no worker waits for another between
  turns (sharing out each turn's rows instead, measured slower: every turn waited for the slower worker).
  A question's K copies stay with one worker, whose engine computes their prompt once.
- The weights are not copied: the policy's parameters move to shared memory once, so an optimizer step
  in the training process is what the workers compute with next. The training process tells them
  which weights they hold (its parameters' version counters), so kept keys and values are reused only
  under the weights that computed them.
- The retriever is the training process's, inherited by the forked workers: an in-process index is read
  where it lies, and an HTTP client opens connections of its own there (``Retriever.forked``).
- Each worker seeds its share from the sampling seed and its own index: a run is reproducible for a given
  number of workers.
- A worker that dies or fails raises here, with its reason; none is left behind (daemon processes,
  closed when the pool is collected or ``close`` is called).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Sequence
from dataclasses import replace

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_search_rl.retrieval.base import Retriever
from lit_search_rl.rollout.agent import AgentLoop, RolloutConfig, RolloutStats, Trajectory
from lit_search_rl.rollout.engine import SamplingConfig
from lit_search_rl.rollout.torch_engine import TorchEngine, weight_versions

WORKER_STRIDE = 10_007
"""Worker w samples with ``seed + w * WORKER_STRIDE``; its engine takes the next seeds for its calls (turns)."""


class _WorkerEngine(TorchEngine):
    """A worker's engine: the training process says which weights it holds (its own counters never move)."""

    weights: tuple[int, ...] = ()

    def _weight_key(self) -> tuple[int, ...]:
        return self.weights

    def begin(self, sampling: SamplingConfig, weights: tuple[int, ...]) -> None:
        """Start a request as a new engine would: its sampling settings, the weights it holds, calls counted
        (and seeded) from 0; the stop-string tables and kept sequences stay."""
        self.sampling, self.weights, self._calls = sampling, weights, 0
        self.warpers = self._warpers()


def _serve(connection, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, retriever: Retriever | None,
           options: dict) -> None:  # fmt: skip
    """A worker's loop: (questions, agent loop config, context length, sampling, weights) in, the agent loop's
    trajectories and stats out."""
    torch.set_num_threads(1)
    if retriever is not None:
        retriever.forked()
    engine = _WorkerEngine(model, tokenizer, **options)
    while True:
        try:
            request = connection.recv()
        except EOFError:  # the training process is gone
            return
        if request is None:
            return
        questions, config, context_length, sampling, weights = request
        try:
            engine.begin(sampling, weights)
            agent = AgentLoop(engine, retriever, tokenizer, config, context_length=context_length)
            connection.send(("ok", (agent.rollout(questions), agent.stats)))
        except Exception as error:  # reported to the training process, which raises it
            connection.send(("error", f"{type(error).__name__}: {error}"))


class ProcessPool:
    """Worker processes that each run the agent loop with a ``TorchEngine`` over the same shared-memory weights.

    Args:
        model: the policy (CPU, a model ``TorchEngine`` runs); its parameters move to shared memory.
        tokenizer: its tokenizer.
        workers: worker processes (one torch thread each).
        retriever: what the workers' agent loops search.
        timeout: seconds to wait for a worker's answer before giving up with an error.
        options: ``TorchEngine`` keyword arguments for every worker.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        workers: int = 2,
        retriever: Retriever | None = None,
        timeout: float = 3600.0,
        **options,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1 (got {workers})")
        self.model, self.tokenizer, self.workers, self.retriever = model, tokenizer, workers, retriever
        self.timeout = timeout
        self.options = {"threads": 1, "prefill_threads": 1, **options}
        self._processes: list = []
        self._connections: list = []

    def start(self) -> None:
        """Fork the workers (done by the first ``rollout``); the model's parameters move to shared memory."""
        if self._processes:
            return
        self.model.share_memory()
        # Forked workers start at once with what this process has loaded (as a DataLoader's workers do);
        # spawned ones (where fork is missing) import torch and the model's code again first.
        methods = torch.multiprocessing.get_all_start_methods()
        context = torch.multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        for _ in range(self.workers):
            ours, theirs = context.Pipe()
            arguments = (theirs, self.model, self.tokenizer, self.retriever, self.options)
            process = context.Process(target=_serve, args=arguments, daemon=True)
            process.start()
            self._processes.append(process)
            self._connections.append(ours)
        weakref.finalize(self, _close, self._processes, self._connections)

    def close(self) -> None:
        """Stop the workers."""
        _close(self._processes, self._connections)
        self._processes, self._connections = [], []

    def rollout(
        self, questions: Sequence[str], config: RolloutConfig, sampling: SamplingConfig,
        context_length: int | None = None,
    ) -> tuple[list[Trajectory], RolloutStats]:  # fmt: skip
        """The agent loop on ``questions``, each worker running it on a contiguous share of them (a question's
        copies together). Returns the trajectories in the order of ``questions``, and the stats of the
        slowest worker (what the rollout waited for) with the tokens and retriever calls of all."""
        self.start()
        try:
            return self._rollout(questions, config, sampling, context_length)
        except BaseException:
            self.close()  # answers still in flight would be read by the next call: start afresh then
            raise

    def _rollout(self, questions: Sequence[str], config: RolloutConfig, sampling: SamplingConfig,
                 context_length: int | None) -> tuple[list[Trajectory], RolloutStats]:  # fmt: skip
        shares, weights = split_groups(questions, self.workers), weight_versions(self.model)
        busy = [worker for worker, (start, end) in enumerate(shares) if end > start]
        if not busy:
            return [], RolloutStats()
        for worker in busy:
            start, end = shares[worker]
            seed = None if sampling.seed is None else sampling.seed + worker * WORKER_STRIDE
            self._send(worker, (list(questions[start:end]), config, context_length, replace(sampling, seed=seed),
                                weights))  # fmt: skip
        answers = [self._answer(worker) for worker in busy]
        slowest = max((stats for _, stats in answers), key=lambda s: s.generate_seconds + s.retrieve_seconds)
        stats = replace(slowest, generated_tokens=sum(s.generated_tokens for _, s in answers),
                        retriever_calls=sum(s.retriever_calls for _, s in answers))  # fmt: skip
        return [t for done, _ in answers for t in done], stats

    def _send(self, worker: int, request: tuple) -> None:
        try:
            self._connections[worker].send(request)
        except OSError:  # a broken pipe: the worker is gone
            self._raise_if_dead(worker)
            raise

    def _raise_if_dead(self, worker: int) -> None:
        process = self._processes[worker]
        process.join(timeout=0.1)
        if not process.is_alive():
            raise RuntimeError(f"rollout worker {worker} died (exit code {process.exitcode})")

    def _answer(self, worker: int) -> tuple[list[Trajectory], RolloutStats]:
        connection = self._connections[worker]
        waited = 0.0
        while not connection.poll(1.0):
            waited += 1.0
            self._raise_if_dead(worker)
            if waited >= self.timeout:
                raise TimeoutError(f"rollout worker {worker} gave no answer in {self.timeout:.0f} s")
        status, payload = connection.recv()
        if status == "error":
            raise RuntimeError(f"rollout worker {worker} failed: {payload}")
        return payload


class PooledAgentLoop:
    """``AgentLoop``'s ``rollout`` and ``stats``, run by the workers of a ``ProcessPool``."""

    def __init__(self, pool: ProcessPool, sampling: SamplingConfig, config: RolloutConfig | None = None,
                 context_length: int | None = None) -> None:  # fmt: skip
        sampling.validate()
        self.config = config or RolloutConfig()
        self.config.validate()
        self.pool, self.sampling, self.context_length = pool, sampling, context_length
        self.stats = RolloutStats()

    def rollout(self, questions: Sequence[str]) -> list[Trajectory]:
        """One trajectory per question (repeat a question K times for a group of K), as ``AgentLoop.rollout``."""
        trajectories, self.stats = self.pool.rollout(questions, self.config, self.sampling, self.context_length)
        return trajectories


def split_groups(questions: Sequence[str], parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous (start, end) slices of ``questions`` of near-equal size, cut only where the question
    changes, so that the copies of a question stay in one slice (the later of two cuts as near; the last
    slices may be empty)."""
    cuts = [0] + [i for i in range(1, len(questions)) if questions[i] != questions[i - 1]] + [len(questions)]
    ends = [min(reversed(cuts), key=lambda c: abs(c - len(questions) * part / parts)) for part in range(1, parts)]
    bounds = [0, *sorted(ends), len(questions)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]


def _close(processes: list, connections: list) -> None:
    for connection in connections:
        with contextlib.suppress(OSError):  # a worker already gone
            connection.send(None)
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
