"""The transformers generation engine: batched ``generate`` with left padding and the KV cache.

It runs the policy in eval mode without gradients and puts it back in the mode it found it
in. A batch shares one ``generate`` call; rows stop independently (stop strings or EOS) and
their padding is cut off afterwards. Rows with different token budgets are grouped by budget.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_search_rl.rollout.engine import Generation, GenerationEngine, SamplingConfig


class HFEngine(GenerationEngine):
    """Generation with a transformers causal LM (the policy itself on the CPU path).

    Args:
        model: the causal LM.
        tokenizer: its tokenizer (for stop strings and padding).
        sampling: temperature, top-p, top-k and seed.
        max_batch_size: rows per ``generate`` call; larger batches are split.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        sampling: SamplingConfig | None = None,
        max_batch_size: int = 64,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.sampling = sampling or SamplingConfig()
        self.sampling.validate()
        self.max_batch_size = max_batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = model.generation_config.eos_token_id
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self._calls = 0

    def generate(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: Sequence[int], stop: Sequence[str]
    ) -> list[Generation]:
        results: list[Generation | None] = [None] * len(prompts)
        groups: dict[int, list[int]] = defaultdict(list)
        for i, budget in enumerate(max_new_tokens):
            groups[budget].append(i)
        was_training = self.model.training
        self.model.eval()
        try:
            for budget, rows in sorted(groups.items()):
                for start in range(0, len(rows), self.max_batch_size):
                    chunk = rows[start : start + self.max_batch_size]
                    for i, gen in zip(chunk, self._generate([prompts[i] for i in chunk], budget, stop), strict=True):
                        results[i] = gen
        finally:
            self.model.train(was_training)
        return results  # type: ignore[return-value]

    @torch.no_grad()
    def _generate(self, prompts: list[Sequence[int]], budget: int, stop: Sequence[str]) -> list[Generation]:
        if budget <= 0:
            return [Generation([], [], "length") for _ in prompts]
        input_ids, attention_mask = self._left_padded(prompts)
        width = input_ids.shape[1]
        device = self.model.device
        self._seed_call()
        s = self.sampling
        sample = s.temperature > 0
        out = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=budget,
            do_sample=sample,
            temperature=s.temperature if sample else None,
            top_p=s.top_p if sample else None,
            top_k=s.top_k if sample else None,
            stop_strings=list(stop) or None,
            tokenizer=self.tokenizer,
            pad_token_id=self.pad_id,
            eos_token_id=sorted(self.eos_ids),
            return_dict_in_generate=True,
            output_logits=True,
            use_cache=True,
        )
        new = out.sequences[:, width:]  # (B, N)
        # One step at a time: stacking (B, N, V) logits first would not fit for a real vocabulary.
        chosen = torch.stack(
            [step.float().log_softmax(-1).gather(-1, new[:, n : n + 1])[:, 0] for n, step in enumerate(out.logits)],
            dim=1,
        ).cpu()  # (B, N)
        new = new.cpu()
        return [self._row(new[r], chosen[r], budget, stop) for r in range(len(prompts))]

    def _left_padded(self, prompts: list[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids left-padded to the longest prompt, and their attention mask."""
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)  # (B, T)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(list(prompt))
            attention_mask[row, width - len(prompt) :] = 1
        return input_ids, attention_mask

    def _seed_call(self) -> None:
        """Seed torch for the next batch: the configured seed plus the number of batches so far."""
        if self.sampling.seed is not None:
            torch.manual_seed(self.sampling.seed + self._calls)
        self._calls += 1

    def _row(self, ids: torch.Tensor, logprobs: torch.Tensor, budget: int, stop: Sequence[str]) -> Generation:
        tokens = ids.tolist()
        for n, token in enumerate(tokens):
            if token in self.eos_ids:
                return Generation(tokens[: n + 1], logprobs[: n + 1].tolist(), "eos")
        # A row that stopped early is padded to the batch width. Stop strings may also match
        # across the prompt boundary (transformers checks the whole sequence), so a row that
        # ended before its budget stopped on a stop string even when its own text lacks it.
        end = len(tokens)
        while end > 0 and tokens[end - 1] == self.pad_id:
            end -= 1
        text = self.tokenizer.decode(tokens[:end])
        stopped = end < budget or any(text.endswith(s) for s in stop)
        return Generation(tokens[:end], logprobs[:end].tolist(), "stop" if stopped else "length")
