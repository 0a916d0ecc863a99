"""The SFT warm-start data: the synthetic world's expert trajectories as token ids with a loss mask.

Retrieved passages inside a trajectory are masked out of the policy loss (the policy must learn
to search and answer, not to write documents). Information blocks show the passage the expert reads
(``documents_per_query: 0``), or what the agent sees at run time: each query's top
``documents_per_query`` passages from BM25 over the world's corpus (the expert's passage is among
the top 3 for every query of the embedded world).

With ``fresh_worlds`` every epoch trains on a newly generated world (the folder's settings, a new
seed): new entities, names and facts, so that memorising a fact never helps and the model can only
learn to read and copy. The folder's own ``sft.jsonl`` is then never trained on and serves as the
held-out set on which validation measures the loss and copy accuracy.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from lightning import LightningDataModule
from torch.utils.data import ConcatDataset, DataLoader
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from lit_search_rl.data.copy_drills import CopyDrills, check_drill_shape, ordinary_token_ids
from lit_search_rl.data.synthetic.expert import (
    Segment,
    gold_documents,
    render_trajectory,
    retrieved_documents,
    steps_from_rows,
)
from lit_search_rl.data.synthetic.questions import Step
from lit_search_rl.data.synthetic.world import World, WorldConfig, generate_world
from lit_search_rl.io import read_jsonl
from lit_search_rl.retrieval.bm25 import InMemoryBM25
from lit_search_rl.rollout.encoding import encode_prompt, encode_segments, pad_batch
from lit_search_rl.rollout.tags import check_instruction

_WORD = re.compile(r"\w+")
_YEAR = re.compile(r"\d{4}")


@dataclass
class ExpertSet:
    """What rendering a world's expert trajectories needs."""

    questions: list[tuple[str, list[Step]]]
    """(question text, the expert's steps) per trajectory."""
    corpus: list[dict]
    """Corpus rows ``{"id", "contents"}``."""
    names: frozenset[str]
    """Every word of every entity name: the words a trajectory copies from the question or a passage."""

    @classmethod
    def from_folder(cls, world: Path) -> ExpertSet:
        """The ``sft.jsonl`` trajectories of a world folder written by ``lit-search-rl synth``."""
        files = _manifest(world)["files"]
        names = frozenset(w for row in read_jsonl(world / files["entities"]) for w in row["name"].split())
        questions = [(row["question"], steps_from_rows(row["steps"])) for row in read_jsonl(world / files["sft"])]
        return cls(questions, list(read_jsonl(world / files["corpus"])), names)

    @classmethod
    def from_world(cls, world: World) -> ExpertSet:
        """The SFT split of a world generated in memory."""
        names = frozenset(w for e in world.entities.by_id.values() for w in e.name.split())
        questions = [(q.question, q.steps) for q in world.splits["sft"]]
        return cls(questions, [p.to_row() for p in world.corpus.passages], names)


def copy_mask(tokenizer: PreTrainedTokenizerBase, segments: Sequence[Segment], names: frozenset[str]) -> list[int]:
    """1 on the tokens of the expert's own text that spell an entity name word or a year, 0 elsewhere.

    Those are the tokens the policy must copy from the question or a passage; aligned with the
    segment part of ``encode_segments`` (the prompt and the closing EOS are not included).
    """
    mask: list[int] = []
    for text, trainable in segments:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if not trainable:
            mask += [0] * len(encoded["input_ids"])
            continue
        spans = [m.span() for m in _WORD.finditer(text) if m.group() in names or _YEAR.fullmatch(m.group())]
        for start, end in encoded["offset_mapping"]:
            mask.append(int(any(start < s_end and s_start < end for s_start, s_end in spans)))
    return mask


def expert_examples(
    tokenizer: PreTrainedTokenizerBase,
    expert: ExpertSet,
    documents_per_query: int,
    max_queries: int,
    max_length: int,
    instruction: str | None = None,
) -> tuple[list[dict], int]:
    """Token ids, loss mask, information mask and copy mask of each trajectory; also the number left out as
    longer than ``max_length``. ``instruction`` is the user message's template (``tags.user_prompt``)."""
    if documents_per_query > 0:
        documents_for = retrieved_documents(InMemoryBM25(expert.corpus), documents_per_query)
    else:
        documents_for = gold_documents({row["id"]: row["contents"] for row in expert.corpus})
    examples, too_long = [], 0
    for question, steps in expert.questions:
        segments = render_trajectory(steps, documents_for)
        prompt = encode_prompt(tokenizer, question, max_queries, instruction)
        ids, loss_mask = encode_segments(tokenizer, prompt, segments)
        if len(ids) > max_length:
            too_long += 1
            continue
        copies = [0] * len(prompt) + copy_mask(tokenizer, segments, expert.names) + [0]
        information = [0] * len(prompt) + [int(not m) for m in loss_mask[len(prompt) : -1]] + [0]
        examples.append({"input_ids": ids, "loss_mask": loss_mask, "information_mask": information,
                         "copy_mask": copies})  # fmt: skip
    return examples, too_long


class LengthGroupedBatches:
    """Batches of example indices whose lengths are close, in a new order on every pass.

    Each pass shuffles the indices, sorts each run of ``window * batch_size`` of them by length, cuts the
    runs into batches and shuffles the batches. Padding to the longest row of a batch then costs little
    (trajectories vary 3x in length) while every batch still mixes question families.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: str, window: int = 32) -> None:
        self.lengths, self.batch_size, self.window = list(lengths), batch_size, window
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        chunk = self.window * self.batch_size
        full, rest = divmod(len(self.lengths), chunk)
        return full * self.window + -(-rest // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(len(self.lengths)))
        self.rng.shuffle(order)
        size, batches = self.batch_size, []
        for start in range(0, len(order), self.window * size):
            chunk = sorted(order[start : start + self.window * size], key=lambda i: self.lengths[i])
            batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
        self.rng.shuffle(batches)
        return iter(batches)


class DrillsFirst:
    """A batch sampler that yields ``drills`` before the batches of ``then`` on its first pass only."""

    def __init__(self, drills: list[list[int]], then: LengthGroupedBatches) -> None:
        self.drills, self.then = drills, then

    def __len__(self) -> int:
        return len(self.drills) + len(self.then)

    def __iter__(self) -> Iterator[list[int]]:
        drills, self.drills = self.drills, []
        yield from drills
        yield from self.then


def fresh_world_seed(world_seed: int, data_seed: int, epoch: int) -> int:
    """Seed of the world generated for ``epoch``; never the seed of the world being tested."""
    seed = random.Random(f"sft-{world_seed}-{data_seed}-{epoch}").randrange(2**31)
    return seed if seed != world_seed else seed + 1


def _manifest(world: Path) -> dict:
    path = Path(world) / "world.json"
    if not path.is_file():
        raise FileNotFoundError(f"data.world: {world} is not a synthetic world folder (no world.json)")
    return json.loads(path.read_text())


class SFTDataModule(LightningDataModule):
    """Expert trajectories of a synthetic world for supervised warm start.

    Args:
        world: Folder written by ``lit-search-rl synth``; its ``sft.jsonl``, ``corpus.jsonl`` and
            ``entities.jsonl`` are read.
        tokenizer: Tokenizer folder or name; when unset, the tokenizer of the module being trained is used.
        batch_size: Trajectories per optimizer step.
        max_length: Trajectories longer than this many tokens are left out (and counted).
        val_size: Trajectories of the folder held out to report validation loss and copy accuracy (with
            ``fresh_worlds``, the first ``val_size`` of the folder's trajectories, none of which is trained on).
        max_queries: Queries per search turn announced in the prompt.
        instruction: The user message asking each question, a template of ``{question}`` and ``{max_queries}``;
            unset for Search-R1's instruction. Train and roll out with the same (``rollout.instruction``).
        documents_per_query: Passages shown per expert query, from BM25 over the world's corpus, as the agent
            sees them at run time (``rollout.documents_per_query``); 0 shows only the passage the expert reads.
        fresh_worlds: Train each epoch on the trajectories of a newly generated world with the folder's settings
            and a new seed, so that the model must copy rather than recall facts. Needs
            ``trainer.reload_dataloaders_every_n_epochs: 1``.
        fresh_size: Expert trajectories per fresh world (one epoch), spread evenly over the question families.
        copy_drills: Batches of copy drills (``data/copy_drills.py``) trained on before the first trajectory:
            random token rows whose second half restates the first in shuffled chunks. They teach a small model
            to copy by content, which the trajectories alone teach slowly. Counted in ``trainer.max_steps``.
        copy_drill_length: Random tokens in the first half of a drill row (a row is twice as long).
        copy_drill_chunk: Tokens per shuffled chunk of a drill row's second half.
        seed: Seed of the train / validation split, of the fresh worlds and of the copy drills.
    """

    def __init__(
        self,
        world: str,
        tokenizer: str | None = None,
        batch_size: int = 16,
        max_length: int = 1024,
        val_size: int = 64,
        max_queries: int = 3,
        instruction: str | None = None,
        documents_per_query: int = 0,
        fresh_worlds: bool = False,
        fresh_size: int = 1000,
        copy_drills: int = 0,
        copy_drill_length: int = 64,
        copy_drill_chunk: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be at least 1 (got {batch_size})")
        if documents_per_query < 0:
            raise ValueError(f"data.documents_per_query must not be negative (got {documents_per_query})")
        if fresh_size < 1:
            raise ValueError(f"data.fresh_size must be at least 1 (got {fresh_size})")
        check_instruction(instruction, "data.instruction")
        if copy_drills < 0:
            raise ValueError(f"data.copy_drills must not be negative (got {copy_drills})")
        check_drill_shape(copy_drill_length, copy_drill_chunk, "data.copy_drill_length", "data.copy_drill_chunk")
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

    def _examples(self, expert: ExpertSet) -> list[dict]:
        h = self.hparams
        examples, too_long = expert_examples(
            self._tokenizer(), expert, h.documents_per_query, h.max_queries, h.max_length, h.instruction
        )
        self.num_too_long += too_long
        return examples

    def setup(self, stage: str) -> None:
        if self.val_examples or self.train_examples:
            return
        examples = self._examples(ExpertSet.from_folder(self.world))
        random.Random(self.hparams.seed).shuffle(examples)
        self.val_examples = examples[: self.hparams.val_size]
        if not self.hparams.fresh_worlds:
            self.train_examples = examples[self.hparams.val_size :]
            if not self.train_examples:
                raise ValueError(
                    f"data.world: {self.world} has no SFT trajectory of at most {self.hparams.max_length} tokens"
                )

    def fresh_examples(self, epoch: int) -> list[dict]:
        """The trajectories of the world generated for ``epoch`` (``fresh_worlds``)."""
        config = WorldConfig(**_manifest(self.world)["config"])
        config.seed = fresh_world_seed(config.seed, self.hparams.seed, epoch)
        config.num_sft, config.num_train, config.num_val, config.num_test = self.hparams.fresh_size, 0, 0, 0
        examples = self._examples(ExpertSet.from_world(generate_world(config)))
        if not examples:
            raise ValueError(f"data.max_length: no fresh SFT trajectory fits in {self.hparams.max_length} tokens")
        return examples

    def _loader(self, examples: list[dict], shuffle: bool, epoch: int = 0) -> DataLoader:
        pad_id = self._tokenizer().pad_token_id
        h = self.hparams
        size = h.batch_size
        dataset = examples
        if not shuffle:
            batches = [list(range(i, min(i + size, len(examples)))) for i in range(0, len(examples), size)]
        else:
            batches = LengthGroupedBatches([len(e["input_ids"]) for e in examples], size, f"{h.seed}-{epoch}")
            if epoch == 0 and h.copy_drills:
                # The drills follow the trajectories in the dataset and come first in the batches.
                drills = CopyDrills(ordinary_token_ids(self._tokenizer()), h.copy_drills * size, h.copy_drill_length,
                                    h.copy_drill_chunk, h.seed)  # fmt: skip
                dataset, offset = ConcatDataset([examples, drills]), len(examples)
                batches = DrillsFirst([list(range(offset + i, offset + i + size)) for i in range(0, len(drills), size)],
                                      batches)  # fmt: skip
        return DataLoader(dataset, batch_sampler=batches, collate_fn=lambda batch: pad_batch(batch, pad_id))

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        epoch = trainer.current_epoch if trainer is not None else 0
        if not self.hparams.fresh_worlds:
            return self._loader(self.train_examples, shuffle=True, epoch=epoch)
        if trainer is not None and trainer.reload_dataloaders_every_n_epochs != 1:
            raise ValueError(
                "data.fresh_worlds needs trainer.reload_dataloaders_every_n_epochs: 1 (a new world every epoch); "
                f"got {trainer.reload_dataloaders_every_n_epochs}"
            )
        self.train_examples = self.fresh_examples(epoch)
        return self._loader(self.train_examples, shuffle=True, epoch=epoch)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_examples, shuffle=False)
