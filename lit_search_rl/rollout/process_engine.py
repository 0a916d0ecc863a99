"""``TorchEngine`` in worker processes: a batch's rows decoded on several CPU cores at once.

A decode step of a small model is mostly Python and small kernels on one core, which neither a second
OpenMP thread (it waits at every kernel's barrier) nor a second Python thread (the interpreter lock)
can share. Worker processes can: each runs its own ``TorchEngine`` on its share of the rows.

- The weights are not copied: the policy's parameters move to shared memory once, so an optimizer step
  in the training process is what the workers compute with next. The training process tells them
  which weights they hold (its parameters' version counters), so kept keys and values are reused only
  under the weights that computed them.
- A row goes to the worker that generated the sequence its prompt extends (the agent loop's next turn),
  so that worker computes only its new tokens; new prompts go, the K copies of one prompt together, to
  the worker with the fewest rows; when one worker would hold more than ``imbalance`` rows beyond
  another, its shortest rows move (their prompt computed again by the other worker).
- Each worker seeds its calls from the sampling seed, the call's number and its own index: a run is
  reproducible for a given number of workers.
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

from lit_search_rl.rollout.engine import Generation, GenerationEngine, SamplingConfig
from lit_search_rl.rollout.slot_cache import PrefixIndex
from lit_search_rl.rollout.torch_engine import TorchEngine, weight_versions

SEED_STRIDE = 1_000_003
"""Seeds of a worker's calls are ``seed + call * SEED_STRIDE + worker * WORKER_STRIDE``; a worker's call takes
the next seed for each of its budget groups, so no two (call, worker, group) meet below these strides."""
WORKER_STRIDE = 10_007


class _WorkerEngine(TorchEngine):
    """A worker's engine: the training process says which weights it holds (its own counters never move)."""

    weights: tuple[int, ...] = ()

    def _weight_key(self) -> tuple[int, ...]:
        return self.weights


def _serve(connection, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, options: dict) -> None:
    """A worker's loop: one request (rows, budgets, stop strings, sampling, weights) in, its generations out."""
    torch.set_num_threads(1)
    engine = _WorkerEngine(model, tokenizer, **options)
    while True:
        try:
            request = connection.recv()
        except EOFError:  # the training process is gone
            return
        if request is None:
            return
        prompts, budgets, stop, sampling, weights = request
        try:
            engine.sampling, engine.weights, engine._calls = sampling, weights, 0
            engine.warpers = engine._warpers()
            connection.send(("ok", engine.generate(prompts, budgets, stop)))
        except Exception as error:  # reported to the training process, which raises it
            connection.send(("error", f"{type(error).__name__}: {error}"))


class ProcessPool:
    """Worker processes that each hold a ``TorchEngine`` over the same shared-memory weights.

    Args:
        model: the policy (CPU, a model ``TorchEngine`` runs); its parameters move to shared memory.
        tokenizer: its tokenizer.
        workers: worker processes (one torch thread each).
        timeout: seconds to wait for a worker's answer before giving up with an error.
        imbalance: rows one worker may have beyond another's before the shortest of them move to it.
        options: ``TorchEngine`` keyword arguments for every worker.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        workers: int = 2,
        timeout: float = 3600.0,
        imbalance: int = 2,
        **options,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1 (got {workers})")
        self.model, self.tokenizer, self.workers, self.timeout = model, tokenizer, workers, timeout
        self.imbalance = imbalance
        self.options = {"threads": 1, "prefill_threads": 1, **options}
        self._processes: list = []
        self._connections: list = []
        self._held = PrefixIndex()  # each sequence of the last call, its row the worker holding it

    def start(self) -> None:
        """Spawn the workers (done by the first ``generate``); the model's parameters move to shared memory."""
        if self._processes:
            return
        self.model.share_memory()
        # Forked workers start at once with what this process has loaded (as a DataLoader's workers do);
        # spawned ones (where fork is missing) import torch and the model's code again first.
        methods = torch.multiprocessing.get_all_start_methods()
        context = torch.multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        for _ in range(self.workers):
            ours, theirs = context.Pipe()
            process = context.Process(target=_serve, args=(theirs, self.model, self.tokenizer, self.options),
                                      daemon=True)  # fmt: skip
            process.start()
            self._processes.append(process)
            self._connections.append(ours)
        weakref.finalize(self, _close, self._processes, self._connections)

    def close(self) -> None:
        """Stop the workers."""
        _close(self._processes, self._connections)
        self._processes, self._connections = [], []

    def engine(self, sampling: SamplingConfig | None = None) -> PooledEngine:
        """An engine over the workers, with its own sampling and call count (as a new ``TorchEngine``)."""
        return PooledEngine(self, sampling or SamplingConfig())

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        budgets: Sequence[int],
        stop: Sequence[str],
        sampling: SamplingConfig,
        call: int,
    ) -> list[Generation]:
        """Every row generated by the worker its prompt belongs to (see the module docstring)."""
        self.start()
        try:
            return self._generate(prompts, budgets, stop, sampling, call)
        except BaseException:
            self.close()  # answers still in flight would be read by the next call: start afresh then
            self._held = PrefixIndex()
            raise

    def _generate(
        self, prompts: Sequence[Sequence[int]], budgets: Sequence[int], stop: Sequence[str],
        sampling: SamplingConfig, call: int,
    ) -> list[Generation]:  # fmt: skip
        shares = self._route(prompts)
        weights = weight_versions(self.model)
        for worker, rows in enumerate(shares):
            if rows:
                seed = None if sampling.seed is None else sampling.seed + call * SEED_STRIDE + worker * WORKER_STRIDE
                request = ([prompts[r] for r in rows], [budgets[r] for r in rows], list(stop),
                           replace(sampling, seed=seed), weights)  # fmt: skip
                try:
                    self._connections[worker].send(request)
                except OSError:  # a broken pipe: the worker is gone
                    self._raise_if_dead(worker)
                    raise
        results: list[Generation | None] = [None] * len(prompts)
        self._held = PrefixIndex()
        for worker, rows in enumerate(shares):
            if not rows:
                continue
            for row, generation in zip(rows, self._answer(worker), strict=True):
                results[row] = generation
                self._held.add([*prompts[row], *generation.token_ids], None, worker, 0)
        return results  # type: ignore[return-value]

    def _route(self, prompts: Sequence[Sequence[int]]) -> list[list[int]]:
        """Row indices for each worker: a continued sequence to its owner, new prompts to the least loaded."""
        shares: list[list[int]] = [[] for _ in range(self.workers)]
        new: dict[tuple[int, ...], list[int]] = {}
        for row, prompt in enumerate(prompts):
            owner = self._owner(prompt)
            if owner is None:
                new.setdefault(tuple(prompt), []).append(row)
            else:
                shares[owner].append(row)
        for rows in sorted(new.values(), key=len, reverse=True):
            min(shares, key=len).extend(rows)
        # Each turn waits for the busiest worker: when the continued rows are shared out very unevenly, the
        # shortest ones move (their new worker computes their whole prompt, which costs less than waiting).
        while True:
            busiest, idlest = max(shares, key=len), min(shares, key=len)
            if len(busiest) - len(idlest) <= self.imbalance:
                break
            idlest.append(busiest.pop(min(range(len(busiest)), key=lambda i: len(prompts[busiest[i]]))))
        return [sorted(rows) for rows in shares]

    def _owner(self, prompt: Sequence[int]) -> int | None:
        held = self._held.longest_prefix(prompt)
        return None if held is None else held.row

    def _raise_if_dead(self, worker: int) -> None:
        process = self._processes[worker]
        process.join(timeout=0.1)
        if not process.is_alive():
            raise RuntimeError(f"rollout worker {worker} died (exit code {process.exitcode})")

    def _answer(self, worker: int) -> list[Generation]:
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


class PooledEngine(GenerationEngine):
    """A ``GenerationEngine`` over a ``ProcessPool``: the pool's workers generate, with this engine's sampling."""

    def __init__(self, pool: ProcessPool, sampling: SamplingConfig) -> None:
        sampling.validate()
        self.pool, self.sampling, self._calls = pool, sampling, 0

    def generate(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: Sequence[int], stop: Sequence[str]
    ) -> list[Generation]:
        self._calls += 1
        return self.pool.generate(prompts, max_new_tokens, stop, self.sampling, self._calls - 1)


def _close(processes: list, connections: list) -> None:
    for connection in connections:
        with contextlib.suppress(OSError):  # a worker already gone
            connection.send(None)
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
