"""The vLLM generation engine: a colocated ``vllm.LLM`` behind the same interface as the transformers engine.

Token ids go in and token ids with their logprobs come out: nothing is re-tokenized, so the
trainer scores exactly the ids that were sampled. A stop string stays in the output (its tokens
are part of the turn the policy is trained on), as with the transformers engine.

"Colocated" means the engine lives in the training process, on the training GPU: each rank owns
one engine (``external_launcher``) that generates for its shard of the batch, and the policy's
weights are pushed into it after optimizer steps (``lit_search_rl.callbacks.VLLMWeightSync``).
``gpu_memory_utilization`` bounds its share of the GPU; with ``enable_sleep_mode`` its weights
and KV cache are released while the trainer runs its backward pass.

vLLM is an optional dependency (``pip install lit-search-rl[gpu]``, or vLLM's CPU build in its
own environment, see ``make test-vllm``); importing this module does not import it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lit_search_rl.full_weights import Weight
from lit_search_rl.rollout.engine import Generation, GenerationEngine, SamplingConfig


@dataclass
class VLLMConfig:
    """Settings of the colocated vLLM engine."""

    gpu_memory_utilization: float = 0.3
    """Fraction of the GPU vLLM may take for weights and KV cache; the rest stays with training."""
    enable_sleep_mode: bool = False
    """Release vLLM's weights and KV cache while training steps run (GPU only); costs a wake-up per step."""
    max_model_len: int | None = None
    """Longest prompt plus response in tokens; unset takes the rollout's ``max_total_tokens``."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weight dtype inside vLLM; ``auto`` follows the model (float32 on CPU)."""
    enforce_eager: bool = False
    """Skip CUDA graph capture: slower decoding, faster start and less memory."""
    max_num_seqs: int = 256
    """Sequences vLLM schedules at once."""
    seed: int = 0
    """Seed of vLLM's own random state; per-request seeds come from ``model.sampling.seed``."""
    distributed: Literal["auto", "none", "external_launcher"] = "auto"
    """``external_launcher`` gives each training rank its own engine (colocation); ``auto`` picks it
    when ``torch.distributed`` is initialised with more than one process."""

    def validate(self) -> None:
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"model.vllm.gpu_memory_utilization must be in (0, 1] (got {self.gpu_memory_utilization})")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"model.vllm.max_model_len must be positive (got {self.max_model_len})")
        if self.max_num_seqs < 1:
            raise ValueError(f"model.vllm.max_num_seqs must be at least 1 (got {self.max_num_seqs})")


def _breaks_kernel_scan(value: Any) -> bool:
    try:
        return hasattr(value, "__dict__") and not hasattr(vars(value), "get")
    except Exception:
        return True


@contextlib.contextmanager
def _modules_safe_for_kernel_scan() -> Iterator[None]:
    """Hide modules that would break vLLM's start-up scan of ``sys.modules`` on CPU.

    Without Triton, vLLM's CPU build swaps its Triton kernels for C++ ones and looks through every
    loaded module's attributes with ``vars(value).get(...)``. An attribute whose ``vars()`` is not a
    mapping (llvmlite's function wrappers, loaded by numba through bm25s) makes that raise. Such
    modules are taken out of ``sys.modules`` while the engine starts and put back afterwards.
    """
    hidden = {}
    with warnings.catch_warnings():  # touching deprecated module attributes warns
        warnings.simplefilter("ignore")
        for name, module in list(sys.modules.items()):
            namespace = getattr(module, "__dict__", None)
            if namespace and any(_breaks_kernel_scan(value) for value in list(namespace.values())):
                hidden[name] = sys.modules.pop(name)
    try:
        yield
    finally:
        for name, module in hidden.items():
            sys.modules.setdefault(name, module)


def _multi_process() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class VLLMEngine(GenerationEngine):
    """Batched generation with a colocated ``vllm.LLM``.

    Args:
        model: model folder (or Hub name) that vLLM loads first; later weights come through ``load_weights``.
        config: memory, sleep mode, dtype and length settings.
        max_model_len: default for ``config.max_model_len``.
        sampling: temperature, top-p, top-k and seed; replace ``engine.sampling`` to change them.
    """

    def __init__(
        self,
        model: str,
        config: VLLMConfig | None = None,
        max_model_len: int = 4096,
        sampling: SamplingConfig | None = None,
    ) -> None:
        try:
            import vllm
        except ImportError as err:
            raise ImportError(
                "model.engine is vllm but vLLM is not installed: pip install 'lit-search-rl[gpu]' on a GPU machine"
            ) from err
        self.config = config or VLLMConfig()
        self.config.validate()
        self.sampling = sampling or SamplingConfig()
        self._calls = 0
        kwargs: dict[str, Any] = {}
        backend = self.config.distributed
        if backend == "auto":
            backend = "external_launcher" if _multi_process() else "none"
        if backend == "external_launcher":
            # One engine per training rank, each in its process: vLLM joins the ranks' process group.
            kwargs["distributed_executor_backend"] = "external_launcher"
        # The engine core in this process: weights are pushed as a stream of tensors, not pickled.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        with _modules_safe_for_kernel_scan():
            self.llm = vllm.LLM(
                model=model,
                dtype=self.config.dtype,
                max_model_len=self.config.max_model_len or max_model_len,
                gpu_memory_utilization=self.config.gpu_memory_utilization,
                enable_sleep_mode=self.config.enable_sleep_mode,
                enforce_eager=self.config.enforce_eager,
                max_num_seqs=self.config.max_num_seqs,
                seed=self.config.seed,
                enable_prefix_caching=True,
                **kwargs,
            )
        self.asleep = False

    def _params(self, budget: int, stop: Sequence[str], seed: int | None) -> Any:
        from vllm import SamplingParams

        s = self.sampling
        greedy = s.temperature == 0
        return SamplingParams(
            n=1,
            temperature=0.0 if greedy else s.temperature,
            top_p=1.0 if greedy else s.top_p,
            top_k=0 if greedy or s.top_k == 0 else s.top_k,
            max_tokens=budget,
            stop=list(stop) or None,
            include_stop_str_in_output=True,
            logprobs=0,  # the sampled token's logprob, from the unmodified distribution
            seed=seed,
            detokenize=True,
        )

    def generate(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: Sequence[int], stop: Sequence[str]
    ) -> list[Generation]:
        from vllm.inputs import TokensPrompt

        if self.asleep:
            self.wake_up()
        seed = self.sampling.seed
        base = None if seed is None else seed + 100_003 * self._calls
        self._calls += 1
        results: list[Generation | None] = [None] * len(prompts)
        todo = [i for i, budget in enumerate(max_new_tokens) if budget > 0]
        for i, budget in enumerate(max_new_tokens):
            if budget <= 0:
                results[i] = Generation([], [], "length")
        if todo:
            params = [self._params(max_new_tokens[i], stop, None if base is None else base + i) for i in todo]
            outputs = self.llm.generate(
                [TokensPrompt(prompt_token_ids=list(prompts[i])) for i in todo], params, use_tqdm=False
            )
            for i, output in zip(todo, outputs, strict=True):
                results[i] = self._generation(output.outputs[0])
        return results  # type: ignore[return-value]

    def _generation(self, completion: Any) -> Generation:
        ids = list(completion.token_ids)
        logprobs = None
        if completion.logprobs is not None:
            logprobs = [float(step[token].logprob) for step, token in zip(completion.logprobs, ids, strict=True)]
        if completion.finish_reason == "length":
            finish = "length"
        elif isinstance(completion.stop_reason, str):
            finish = "stop"
        else:  # EOS (stop_reason None) or a stop token id
            finish = "eos"
        return Generation(ids, logprobs, finish)

    # -- weights and memory ------------------------------------------------------------------

    def load_weights(self, weights: Iterable[Weight]) -> None:
        """Overwrite all of vLLM's weights with ``(name, tensor)`` pairs under Hugging Face names.

        vLLM maps the names itself (fusing q/k/v and gate/up) and reloads layer by layer as the
        tensors arrive, finishing each layer's kernel layout at the end of the call; a layer whose
        tensors come in a later call falls back to its old weights. So the whole model goes in one
        call, and ``weights`` may be a generator: with the engine in this process it is consumed
        one tensor at a time, never held whole. Call ``reset_prefix_cache`` afterwards.
        """
        if self.asleep:
            self.wake_up()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})

    def reset_prefix_cache(self) -> None:
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        """Release weights and KV cache (sleep mode level 1: weights kept in CPU memory)."""
        if self.config.enable_sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False
