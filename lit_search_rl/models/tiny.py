"""A tiny offline model for the embedded default: a BPE tokenizer trained on the synthetic
world, and a small randomly initialised Qwen3 model that SFT and GRPO then train.

Both are saved in the Hugging Face layout, so ``AutoTokenizer.from_pretrained(folder)`` and
``AutoModelForCausalLM.from_pretrained(folder)`` load them like any Hub model. The head
dimension is 64 because the CPU build of vLLM refuses smaller heads.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from lit_search_rl.checks import require_at_least
from lit_search_rl.data.synthetic.expert import gold_documents, render_trajectory, steps_from_rows
from lit_search_rl.io import atomic_output_dir, check_output_dir, read_jsonl
from lit_search_rl.rollout.tags import TAGS, user_prompt

PAD, BOS_CHAT, EOS = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

# ChatML, as Qwen models use it; `add_generation_prompt` opens the assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class TinyModelConfig:
    """Size of the tiny tokenizer and model."""

    vocab_size: int = 2048
    """Target vocabulary size of the BPE tokenizer (special and tag tokens included)."""
    hidden_size: int = 256
    """Width of the transformer."""
    num_layers: int = 4
    """Number of decoder layers."""
    num_heads: int = 4
    """Attention heads; ``hidden_size / num_heads`` need not equal the head dimension in Qwen3."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention)."""
    head_dim: int = 64
    """Per-head dimension; 64 so that vLLM's CPU attention kernel accepts the model."""
    intermediate_size: int = 768
    """Width of the MLP."""
    max_position_embeddings: int = 2048
    """Longest sequence the model is built for."""
    seed: int = 0
    """Seed of the random initialisation."""
    architecture: Literal["qwen3", "llama"] = "qwen3"
    """Decoder layout: ``qwen3`` normalises each query and key head (QK-norm); ``llama`` is the same decoder
    without it, which learns to copy by content sooner in ``benchmarks/induction_drill.py``. Both run in the
    torch engine and in vLLM."""

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first impossible option."""
        require_at_least(self, ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                                "intermediate_size", "max_position_embeddings"))  # fmt: skip
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"--num_heads ({self.num_heads}) must be a multiple of --num_kv_heads ({self.num_kv_heads})"
            )
        if self.architecture not in ("qwen3", "llama"):
            raise ValueError(f"--architecture must be qwen3 or llama (got {self.architecture!r})")
        if self.vocab_size < 256 + 3 + len(TAGS):
            raise ValueError(f"--vocab_size must be at least {256 + 3 + len(TAGS)} to hold the byte alphabet")


def world_texts(world_dir: Path) -> Iterator[str]:
    """Everything the agent will read or write in this world: passages, prompts, expert turns."""
    world_dir = Path(world_dir)
    manifest = json.loads((world_dir / "world.json").read_text())
    corpus = {row["id"]: row["contents"] for row in read_jsonl(world_dir / manifest["files"]["corpus"])}
    yield from corpus.values()
    documents_for = gold_documents(corpus)
    for split, name in manifest["files"].items():
        if split in ("corpus", "entities"):
            continue
        for row in read_jsonl(world_dir / name):
            yield user_prompt(row["question"])
            if "steps" in row:
                yield "".join(text for text, _ in render_trajectory(steps_from_rows(row["steps"]), documents_for))


def train_tokenizer(texts: Iterator[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with ChatML special tokens and the protocol tags as whole tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(TAGS),
        special_tokens=[PAD, BOS_CHAT, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    # Tags are ordinary (non-special) tokens: they survive decoding and are always one id,
    # which makes the protocol cheap for a tiny model to learn.
    tokenizer.add_tokens(list(TAGS))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=PAD, model_max_length=2048)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(config: TinyModelConfig, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    """A randomly initialised causal LM of ``config.architecture`` sized by ``config`` for ``tokenizer``."""
    torch.manual_seed(config.seed)
    config_class, model_class = {"qwen3": (Qwen3Config, Qwen3ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}[
        config.architecture
    ]
    model_config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = model_class(model_config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def create_tiny_model(world_dir: Path, out: Path, config: TinyModelConfig, overwrite: bool = False) -> dict:
    """Train the tokenizer on ``world_dir``, build the model and save both to ``out`` atomically."""
    config.validate()
    if not (Path(world_dir) / "world.json").is_file():
        raise ValueError(
            f"--world {world_dir} is not a synthetic world folder (no world.json); run `lit-search-rl synth`"
        )
    check_output_dir(out, overwrite)
    tokenizer = train_tokenizer(world_texts(world_dir), config.vocab_size)
    model = build_model(config, tokenizer)
    summary = {"vocab_size": len(tokenizer), "parameters": sum(p.numel() for p in model.parameters())}
    with atomic_output_dir(out, overwrite) as tmp:
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)
        (tmp / "tiny_model.json").write_text(json.dumps({"config": asdict(config), **summary}, indent=2) + "\n")
    return summary
