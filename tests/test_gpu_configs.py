"""Dry runs of the GPU recipes (configs/qwen3-*): everything they describe is built, short of the GPU itself.

Each recipe is instantiated as written, from a folder where the files it names exist (stood in
by the test world's model, questions and index), with only ``accelerator: cpu`` and one device
changed: the FSDP strategy, the callbacks (weight sync, retriever service, checkpointing), the
module with its vLLM settings and the recycling data module with the seven-dataset evaluation
file. Then the data module loads its questions and the module builds its policy. What needs
a GPU (vLLM's engine, faiss-gpu, NCCL) is not started.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from lightning.pytorch.strategies import ModelParallelStrategy

from lit_search_rl.callbacks.retriever_service import RetrieverService
from lit_search_rl.callbacks.weight_sync import VLLMWeightSync
from lit_search_rl.data.qa import load_qa
from lit_search_rl.lightning_cli import SearchRLCLI

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs").glob("qwen3-*/*.yaml"))
STRATEGY_OF = {"recycle": ("recycle", 2), "grpo": ("grpo", 1), "bounded-dapo": ("bounded_dapo", 2)}


def _search_r1_parquet(world_dir: Path, out: Path) -> None:
    """The world's test questions in Search-R1's layout, one ``data_source`` per family."""
    rows = []
    for family in ("chain", "iterative", "comparison"):
        for record in load_qa(world_dir / "test" / f"{family}.jsonl"):
            prompt = [{"role": "user", "content": f"Question: {record.question}"}]
            target = {"ground_truth": {"target": list(record.golden_answers)}, "style": "rule"}
            rows.append({"data_source": family, "prompt": prompt, "reward_model": target})
    out.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), out)


def _stand_in_files(folder: Path, recipe: str, world_dir: Path, model_dir: Path, bm25_dir: Path) -> None:
    (folder / "runs" / recipe).mkdir(parents=True)
    (folder / "runs" / recipe / "sft-model").symlink_to(model_dir)
    (folder / "runs" / recipe / "world").symlink_to(world_dir)
    (folder / "indexes").mkdir()
    (folder / "indexes" / "wiki18-e5").symlink_to(bm25_dir)
    (folder / "data").mkdir()
    # one draw of k * B = 64 candidates needs at least 64 questions: the world's, twice over
    rows = [json.loads(line) for line in (world_dir / "train.jsonl").read_text().splitlines()]
    rows += [{**row, "id": f"{row['id']}-again"} for row in rows]
    (folder / "data" / "train-10k.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    _search_r1_parquet(world_dir, folder / "data" / "searchr1" / "test.parquet")


@pytest.mark.parametrize("config", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_dry_run_builds_everything_but_the_gpu_parts(config: Path, tmp_path: Path, world_dir: Path,
                                                            model_dir: Path, bm25_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    _stand_in_files(tmp_path, config.parent.name, world_dir, model_dir, bm25_dir)
    monkeypatch.chdir(tmp_path)
    args = ["--config", str(config), "--trainer.accelerator", "cpu", "--trainer.devices", "1"]
    if config.stem == "sft":  # the Hub model is not reachable here; the test model stands in
        args += ["--model.model", str(model_dir), "--data.val_size", "8"]  # and the test world is small
    cli = SearchRLCLI(args=args, run=False)

    assert isinstance(cli.trainer.strategy, ModelParallelStrategy)  # FSDP2
    cli.trainer.strategy.connect(cli.model)
    cli.datamodule.trainer = cli.trainer  # the data module reads B and k from the module
    cli.datamodule.setup("fit")
    cli.datamodule.setup("test")
    cli.model.configure_model()
    assert cli.model.policy is not None
    if config.stem == "sft":
        assert cli.datamodule.train_examples
        return
    h = cli.model.hparams
    assert (h.group_size, h.batch_size, h.engine) == (4, 32, "vllm")  # the paper's B and K, rollouts from vLLM
    strategy, oversample = STRATEGY_OF[config.stem]
    assert cli.datamodule.strategy_name == strategy and h.oversample == oversample
    callbacks = {type(c) for c in cli.trainer.callbacks}
    assert {VLLMWeightSync, RetrieverService} <= callbacks
    assert len(cli.datamodule.records) == 2 * len(load_qa(world_dir / "train.jsonl"))
    assert cli.datamodule.sampler.strategy.candidates() == 32 * oversample
    for split in ("val", "test"):  # the Search-R1 file: one dataset per data_source
        assert set(cli.datamodule.eval_datasets[split]) == {"chain", "iterative", "comparison"}
