"""SFT data: copy masks, retrieved information blocks, fresh worlds, length-grouped batches, copy accuracy."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from lit_search_rl.data.copy_drills import CopyDrills, ordinary_token_ids
from lit_search_rl.data.sft import ExpertSet, LengthGroupedBatches, SFTDataModule, fresh_world_seed
from lit_search_rl.io import read_jsonl
from lit_search_rl.retrieval.bm25 import InMemoryBM25
from lit_search_rl.retrieval.open import open_retriever
from lit_search_rl.rollout.protocols import TagProtocol
from lit_search_rl.rollout.tags import TAGS
from lit_search_rl.sft import copy_counts


def _module(world_dir: Path, model_dir: Path, **kwargs) -> SFTDataModule:
    dm = SFTDataModule(world=str(world_dir), tokenizer=str(model_dir), batch_size=4, val_size=5, **kwargs)
    dm.setup("fit")
    return dm


def test_copy_mask_marks_the_names_and_years_of_the_expert_text_only(world_dir: Path, model_dir: Path) -> None:
    dm = _module(world_dir, model_dir)
    names = ExpertSet.from_folder(world_dir).names
    for e in dm.train_examples[:20]:
        assert all(c <= m for c, m in zip(e["copy_mask"], e["loss_mask"], strict=True))  # the policy's tokens only
        # Runs of consecutive copy tokens, decoded apart: a lone space token between two words is not a copy.
        runs, run = [], []
        for token, c in zip(e["input_ids"], e["copy_mask"], strict=True):
            if c:
                run.append(token)
            elif run:
                runs, run = [*runs, run], []
        words = re.findall(r"\w+", " ".join(dm.tokenizer.decode(r) for r in runs))
        assert words and all(w in names or re.fullmatch(r"\d{4}", w) for w in words), [
            w for w in words if w not in names
        ]
        # Every name word the expert writes is covered.
        own = dm.tokenizer.decode([i for i, m in zip(e["input_ids"], e["loss_mask"], strict=True) if m])
        assert sorted(w for w in re.findall(r"\w+", own) if w in names) == sorted(w for w in words if w in names)


def test_top_k_blocks_hold_what_bm25_returns_and_the_expert_passage(world_dir: Path, model_dir: Path) -> None:
    # Long enough that no trajectory is left out, so that both hold out the same questions.
    gold, top3 = (
        _module(world_dir, model_dir, max_length=4096),
        _module(world_dir, model_dir, documents_per_query=3, max_length=4096),
    )

    def documents(dm: SFTDataModule) -> int:
        return sum(dm.tokenizer.decode(e["input_ids"]).count("(Title: ") for e in dm.val_examples)

    assert documents(top3) > 2 * documents(gold)
    # The information mask is exactly the retrieved text: the complement of the policy's tokens after the prompt.
    e = top3.train_examples[0]
    start = e["loss_mask"].index(1)
    assert all(i + m == 1 for i, m in zip(e["information_mask"][start:-1], e["loss_mask"][start:-1], strict=True))


def test_in_memory_bm25_ranks_like_the_index(world_dir: Path, bm25_dir: Path) -> None:
    rows = list(read_jsonl(world_dir / "corpus.jsonl"))
    queries = [rows[3]["contents"].split("\n")[0], rows[9]["contents"].split("\n")[0] + " founded"]
    memory, index = InMemoryBM25(rows).search(queries, 3), open_retriever(str(bm25_dir)).search(queries, 3)
    assert [[d.id for d in docs] for docs in memory] == [[d.id for d in docs] for docs in index]


def test_fresh_worlds_train_on_new_worlds_and_hold_out_the_folder(world_dir: Path, model_dir: Path) -> None:
    dm = _module(world_dir, model_dir, fresh_worlds=True, fresh_size=12)
    assert dm.train_examples == [] and len(dm.val_examples) == 5
    first, second = dm.fresh_examples(0), dm.fresh_examples(1)
    assert len(first) == 12 and first != second and first == dm.fresh_examples(0)  # new per epoch, repeatable
    folder = {tuple(e["input_ids"]) for e in dm.val_examples}
    assert not folder & {tuple(e["input_ids"]) for e in first + second}
    assert fresh_world_seed(7, 0, 0) != 7 and fresh_world_seed(7, 0, 0) != fresh_world_seed(7, 0, 1)


def test_fresh_worlds_refuse_a_trainer_that_keeps_its_loader(world_dir: Path, model_dir: Path) -> None:
    dm = _module(world_dir, model_dir, fresh_worlds=True, fresh_size=6)
    dm.trainer = SimpleNamespace(reload_dataloaders_every_n_epochs=0, current_epoch=0)
    with pytest.raises(ValueError, match="reload_dataloaders_every_n_epochs: 1"):
        dm.train_dataloader()


def test_length_grouped_batches_cover_every_example_once_in_a_new_order() -> None:
    lengths = [(i * 37) % 101 for i in range(203)]
    sampler = LengthGroupedBatches(lengths, 4, "seed", window=5)
    first, second = list(sampler), list(sampler)
    assert len(first) == len(sampler)
    assert sorted(i for b in first for i in b) == list(range(203)) == sorted(i for b in second for i in b)
    assert first != second
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in first) / len(first)
    assert spread < 25  # a random batch of 4 spans about 60


def test_copy_counts_are_greedy_hits_on_copied_tokens() -> None:
    targets = torch.tensor([[1, 2, 3], [2, 2, 1]])
    copies = torch.tensor([[1, 0, 1], [0, 1, 0]])
    logits = torch.full((2, 3, 4), -5.0)
    for b, t, token in [(0, 0, 1), (0, 2, 0), (1, 1, 2)]:  # right on (0,0) and (1,1); wrong on (0,2)
        logits[b, t, token] = 5.0
    assert copy_counts(logits, targets, copies) == (2, 3, 1, 2)


def test_the_empty_retriever_returns_no_passage() -> None:
    assert open_retriever("empty://").search(["anything", "else"], 3) == [[], []]


def test_a_copy_drill_row_restates_its_first_half_in_shuffled_chunks(model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ordinary = ordinary_token_ids(tokenizer)
    tags = set(tokenizer.convert_tokens_to_ids(list(TAGS)))
    assert not (set(ordinary.tolist()) & (tags | set(tokenizer.all_special_ids)))
    drills = CopyDrills(ordinary, rows=3, length=16, chunk=4, seed=5)
    row = drills[1]
    first, second = row["input_ids"][:16], row["input_ids"][16:]
    assert len(row["input_ids"]) == 32 and set(first) <= set(ordinary.tolist())
    chunks = [tuple(first[i : i + 4]) for i in range(0, 16, 4)]
    shuffled = [tuple(second[i : i + 4]) for i in range(0, 16, 4)]
    assert sorted(shuffled) == sorted(chunks)
    # The loss is on every chunk token after the first: the only tokens a lookup can predict.
    assert row["loss_mask"] == [0] * 16 + [0, 1, 1, 1] * 4 == row["copy_mask"]
    assert row == drills[1] and row != drills[2] and row != CopyDrills(ordinary, 3, 16, 4, seed=6)[1]
    with pytest.raises(IndexError):
        drills[3]


def test_copy_drills_come_first_in_the_first_pass_only(world_dir: Path, model_dir: Path) -> None:
    dm = _module(world_dir, model_dir, copy_drills=2, copy_drill_length=8, copy_drill_chunk=2)
    loader = dm._loader(dm.train_examples, shuffle=True, epoch=0)
    planned = len(loader)
    batches = list(loader)
    assert len(batches) == planned == 2 + -(-len(dm.train_examples) // 4)
    for drill in batches[:2]:
        assert drill["input_ids"].shape == (4, 16)
        assert drill["loss_mask"].tolist() == [[0] * 8 + [0, 1] * 4] * 4
    assert all(b["input_ids"].shape[1] > 16 for b in batches[2:])  # trajectories
    assert len(loader) == len(batches) - 2
    again = list(loader)
    assert len(again) == len(batches) - 2 and all(b["input_ids"].shape[1] > 16 for b in again)
    # A loader made for a later epoch (fresh worlds) has no drills.
    assert len(dm._loader(dm.train_examples, shuffle=True, epoch=1)) == len(batches) - 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"copy_drills": -1}, "data.copy_drills must not be negative"),
        ({"copy_drill_length": 10, "copy_drill_chunk": 4}, "data.copy_drill_length (10) must be a multiple"),
        ({"copy_drill_chunk": 1}, "which must be at least 2"),
    ],
)
def test_bad_copy_drill_settings_are_refused(world_dir: Path, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        SFTDataModule(world=str(world_dir), **options)


def test_the_warm_start_prompt_is_the_agents_prompt_with_the_same_instruction(world_dir: Path, model_dir: Path) -> None:
    dm = _module(world_dir, model_dir, instruction="Question: {question}")
    rows = list(read_jsonl(world_dir / "sft.jsonl"))
    prompts = {tuple(TagProtocol().prompt_ids(dm.tokenizer, r["question"], 3, "Question: {question}")) for r in rows}
    for e in dm.train_examples[:10]:
        assert tuple(e["input_ids"][: e["loss_mask"].index(1)]) in prompts
    with pytest.raises(ValueError, match=re.escape("data.instruction must contain {question}")):
        SFTDataModule(world=str(world_dir), instruction="Answer.")
