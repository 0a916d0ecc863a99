"""SFT warm start: masks select exactly the expert's own text, and the loss counts only those tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from lit_search_rl.data.sft import SFTDataModule
from lit_search_rl.data.synthetic.expert import gold_documents, render_trajectory, steps_from_rows
from lit_search_rl.io import read_jsonl
from lit_search_rl.rollout.encoding import encode_prompt
from lit_search_rl.rollout.tags import INFO_CLOSE, INFO_OPEN
from lit_search_rl.sft import next_token_predictions, token_nll


@pytest.fixture(scope="module")
def data(world_dir: Path, model_dir: Path) -> SFTDataModule:
    dm = SFTDataModule(world=str(world_dir), tokenizer=str(model_dir), batch_size=4, val_size=5)
    dm.setup("fit")
    return dm


def test_mask_one_is_the_model_text_and_mask_zero_the_prompt_and_information(
    data: SFTDataModule, world_dir: Path, model_dir: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    corpus = {r["id"]: r["contents"] for r in read_jsonl(world_dir / "corpus.jsonl")}
    rows = {r["question"]: r for r in read_jsonl(world_dir / "sft.jsonl")}
    assert len(data.train_examples) + len(data.val_examples) == len(rows) == 60
    for example in data.train_examples[:10]:
        ids, mask = example["input_ids"], example["loss_mask"]
        prompt_len = mask.index(1)
        prompt_text = tokenizer.decode(ids[:prompt_len])
        question = next(q for q in rows if q in prompt_text)
        assert ids[:prompt_len] == encode_prompt(tokenizer, question)
        segments = render_trajectory(steps_from_rows(rows[question]["steps"]), gold_documents(corpus))
        model_text = "".join(t for t, trainable in segments if trainable) + tokenizer.eos_token
        env_text = "".join(t for t, trainable in segments if not trainable)
        assert tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m]) == model_text
        env_ids = [i for i, m in zip(ids[prompt_len:], mask[prompt_len:], strict=True) if not m]
        assert tokenizer.decode(env_ids) == env_text
        assert env_text.count(INFO_OPEN) == env_text.count(INFO_CLOSE) >= 1


def test_batches_are_padded_and_masked(data: SFTDataModule) -> None:
    batch = next(iter(data.train_dataloader()))
    b, t = batch["input_ids"].shape
    assert b == 4 and batch["loss_mask"].shape == (b, t) == batch["attention_mask"].shape
    assert (batch["loss_mask"] <= batch["attention_mask"]).all()  # padding is never trained on


def test_token_nll_ignores_masked_tokens() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 11)
    targets = torch.randint(0, 11, (2, 4))
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    expected = [-torch.log_softmax(logits[i, t], -1)[targets[i, t]] for i in range(2) for t in range(4) if mask[i, t]]
    assert torch.allclose(token_nll(logits, targets, mask), torch.stack(expected).mean())
    # Changing a logit that predicts a masked token changes nothing.
    changed = logits.clone()
    changed[0, 3] += 5.0
    assert torch.allclose(token_nll(changed, targets, mask), token_nll(logits, targets, mask))


def test_logits_are_kept_only_where_a_mask_trains_the_next_token(model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    torch.manual_seed(0)
    ids = torch.randint(3, 100, (2, 9))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    loss_mask = torch.zeros_like(ids)
    loss_mask[0, [3, 4]], loss_mask[1, 7] = 1, 1
    other = torch.zeros_like(ids)
    other[1, 8] = 1
    logits, targets, (kept_loss, kept_other) = next_token_predictions(policy, batch, [loss_mask, other])
    positions = [2, 3, 6, 7]  # each predicts a token some mask trains on (3, 4, 7, 8)
    full = policy(**batch).logits
    assert torch.allclose(logits, full[:, positions], atol=1e-5)
    assert torch.equal(targets, ids[:, [p + 1 for p in positions]])
    assert kept_loss.tolist() == [[1, 1, 0, 0], [0, 0, 1, 0]] and kept_other.tolist() == [[0, 0, 0, 0], [0, 0, 0, 1]]
    # The same loss as on full logits shifted by one.
    shifted = token_nll(full[:, :-1], ids[:, 1:], loss_mask[:, 1:])
    assert torch.allclose(token_nll(logits, targets, kept_loss), shifted, atol=1e-5)


def test_missing_world_is_a_clear_error(tmp_path: Path, model_dir: Path) -> None:
    dm = SFTDataModule(world=str(tmp_path), tokenizer=str(model_dir))
    with pytest.raises(FileNotFoundError, match="data.world"):
        dm.setup("fit")
