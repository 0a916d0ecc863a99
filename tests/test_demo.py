"""The main job's pipeline, end to end at a small size (the full ``make demo`` is timed in RESULTS.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_search_rl.cli import main
from lit_search_rl.data.synthetic.world import WorldConfig, generate_world
from lit_search_rl.tools.demo import _SCALED_COUNTS, DemoSettings, _world_config


@pytest.mark.slow
def test_demo_pipeline_runs_every_stage_and_prints_the_summary(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    sizes = {"copy_drills": 2, "sft_steps": 5, "grpo_steps": 2, "num_test": 3, "num_val": 2, "val_every": 1}
    args = [word for name, value in sizes.items() for word in (f"--{name}", str(value))]
    assert main(["demo", "--out", str(out), *args]) == 0
    printed = capsys.readouterr().out
    for family in ("chain", "iterative", "comparison", "avg"):
        assert family in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["before"]["avg"]["n"] == summary["after"]["avg"]["n"] == 9
    for family in ("chain", "iterative", "comparison", "avg"):
        gain = summary["gains"][family]
        assert gain["low"] <= gain["gain"] <= gain["high"]
        assert gain["gain"] == pytest.approx(summary["after"][family]["em"] - summary["before"][family]["em"])
        # Nothing can be found without passages: the control's searches come back empty.
        assert summary["no_search"]["sft"][family]["n"] == summary["before"][family]["n"]
    assert "95% interval" in printed and "no search" in printed
    # the warm start is validated once, after its last step
    assert 0.0 <= summary["copy_accuracy"] <= 1.0 and "copy accuracy" in printed
    assert Path(summary["validation_curve"]).is_file()
    assert (out / "sft-model" / "config.json").is_file() and (out / "grpo-recycle-model" / "config.json").is_file()
    assert list((out / "logs").rglob("recycling.png"))
    assert list((out / "logs").rglob("test-step0.md"))


@pytest.mark.parametrize("scale", [1, 2])
def test_demo_world_scales_every_entity_count(scale: int) -> None:
    config = _world_config(3, DemoSettings(world_scale=scale, num_sft=60))
    assert config.seed == 3 and config.num_sft == 60
    for name in _SCALED_COUNTS:
        assert getattr(config, name) == scale * getattr(WorldConfig, name)


def test_the_demo_world_holds_its_default_splits() -> None:
    """The default sizes fit the default world: generation refuses a world too small for its questions."""
    world = generate_world(_world_config(0, DemoSettings()))
    assert len(world.splits["sft"]) == DemoSettings.num_sft
    assert len(world.splits["train"]) == DemoSettings.num_train


def test_the_rl_pool_is_the_demo_settings_own() -> None:
    assert _world_config(0, DemoSettings(num_train=123)).num_train == 123
