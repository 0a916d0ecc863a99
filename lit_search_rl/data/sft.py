"""The SFT warm-start data: the synthetic world's expert trajectories as token ids with a loss mask.

Retrieved passages inside a trajectory are masked out (the policy must learn to search and
answer, not to write documents). Information blocks show the gold passage of each query; a
later stage may render them with the real retriever instead.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from lightning import LightningDataModule
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from lit_search_rl.data.synthetic.expert import gold_documents, render_trajectory, steps_from_rows
from lit_search_rl.io import read_jsonl
from lit_search_rl.rollout.encoding import encode_prompt, encode_segments, pad_batch


class SFTDataModule(LightningDataModule):
    """Expert trajectories of a synthetic world for supervised warm start.

    Args:
        world: Folder written by ``lit-search-rl synth`` (its ``sft.jsonl`` and ``corpus.jsonl`` are read).
        tokenizer: Tokenizer folder or name; when unset, the tokenizer of the module being trained is used.
        batch_size: Trajectories per optimizer step.
        max_length: Trajectories longer than this many tokens are left out (and counted).
        val_size: Trajectories held out to report validation loss.
        max_queries: Queries per search turn announced in the prompt.
        seed: Seed of the train / validation split.
    """

    def __init__(
        self,
        world: str,
        tokenizer: str | None = None,
        batch_size: int = 16,
        max_length: int = 1024,
        val_size: int = 64,
        max_queries: int = 3,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be at least 1 (got {batch_size})")
        self.save_hyperparameters()
        self.world = Path(world)
        self.tokenizer_name = tokenizer
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.train_examples: list[dict] = []
        self.val_examples: list[dict] = []
        self.num_too_long = 0

    def _tokenizer(self) -> PreTrainedTokenizerBase:
        if self.tokenizer is None:
            if self.tokenizer_name is not None:
                self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_name)
            elif self.trainer is not None and hasattr(self.trainer.lightning_module, "tokenizer"):
                self.tokenizer = self.trainer.lightning_module.tokenizer
            else:
                raise ValueError("data.tokenizer is not set and the module has no tokenizer to share")
        return self.tokenizer

    def setup(self, stage: str) -> None:
        if self.train_examples:
            return
        manifest_path = self.world / "world.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"data.world: {self.world} is not a synthetic world folder (no world.json)")
        files = json.loads(manifest_path.read_text())["files"]
        corpus = {row["id"]: row["contents"] for row in read_jsonl(self.world / files["corpus"])}
        documents_for = gold_documents(corpus)
        tokenizer = self._tokenizer()
        examples = []
        for row in read_jsonl(self.world / files["sft"]):
            segments = render_trajectory(steps_from_rows(row["steps"]), documents_for)
            prompt = encode_prompt(tokenizer, row["question"], self.hparams.max_queries)
            ids, mask = encode_segments(tokenizer, prompt, segments)
            if len(ids) > self.hparams.max_length:
                self.num_too_long += 1
                continue
            examples.append({"input_ids": ids, "loss_mask": mask})
        random.Random(self.hparams.seed).shuffle(examples)
        self.val_examples = examples[: self.hparams.val_size]
        self.train_examples = examples[self.hparams.val_size :]
        if not self.train_examples:
            raise ValueError(
                f"data.world: {self.world} has no SFT trajectory of at most {self.hparams.max_length} tokens"
            )

    def _loader(self, examples: list[dict], shuffle: bool) -> DataLoader:
        pad_id = self._tokenizer().pad_token_id
        return DataLoader(
            examples,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            collate_fn=lambda batch: pad_batch(batch, pad_id),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_examples, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_examples, shuffle=False)
