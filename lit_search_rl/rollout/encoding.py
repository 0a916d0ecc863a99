"""Token ids of prompts and trajectories, built turn by turn and never re-tokenized.

The agent loop and the SFT data both concatenate the ids of each piece (prompt, the model's
turn, an information block) in order, with a loss mask of 1 on the model's own tokens only.
Encoding each piece separately is what makes the trained ids equal the ids the policy sees.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from lit_search_rl.rollout.tags import user_prompt


def encode_messages(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], tools: list[dict] | None = None
) -> list[int]:
    """Ids of chat ``messages`` through the tokenizer's chat template, with the assistant turn opened."""
    ids = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, question: str, max_queries: int = 3, instruction: str | None = None
) -> list[int]:
    """Ids of the chat-templated user turn of the tag protocol, ending with the opened assistant turn
    (``instruction``: the user message's template, ``tags.user_prompt``)."""
    content = user_prompt(question, max_queries, instruction)
    return encode_messages(tokenizer, [{"role": "user", "content": content}])


def encode_segments(
    tokenizer: PreTrainedTokenizerBase, prompt_ids: Sequence[int], segments: Sequence[tuple[str, bool]]
) -> tuple[list[int], list[int]]:
    """Prompt ids then each segment's ids, then EOS; returns (ids, loss mask).

    The mask is 0 on the prompt and on non-trainable segments, 1 on trainable segments and
    on the closing EOS, which the policy must learn to emit after its answer.
    """
    ids, mask = list(prompt_ids), [0] * len(prompt_ids)
    for text, trainable in segments:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        mask += [int(trainable)] * len(piece)
    ids.append(tokenizer.eos_token_id)
    mask.append(1)
    return ids, mask


def pad_batch(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``input_ids`` and every other per-token list of the examples (``loss_mask`` and any
    further masks) into (B, T) tensors, padding masks with 0, and add an ``attention_mask``."""
    width = max(len(e["input_ids"]) for e in examples)
    masks = [key for key in examples[0] if key != "input_ids"]
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # (B, T)
    padded = {key: torch.zeros((len(examples), width), dtype=torch.long) for key in (*masks, "attention_mask")}
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        input_ids[i, :n] = torch.tensor(e["input_ids"])
        for key in masks:
            padded[key][i, :n] = torch.tensor(e[key])
        padded["attention_mask"][i, :n] = 1
    return {"input_ids": input_ids, **padded}
