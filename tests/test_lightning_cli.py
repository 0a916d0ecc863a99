"""`lit-search-rl fit|validate|test` through LightningCLI: documented arguments, every config parses, a real fit."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from lit_search_rl.data.eval_data import EvalDataModule
from lit_search_rl.data.qa_datamodule import QADataModule
from lit_search_rl.data.recycling_datamodule import RecyclingDataModule
from lit_search_rl.data.sft import SFTDataModule
from lit_search_rl.grpo import GRPOModule
from lit_search_rl.sft import SFTModule

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lit_search_rl.cli", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_fit_help_documents_the_trainer_and_how_to_see_model_arguments() -> None:
    result = run_cli("fit", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--config", "--trainer.max_steps", "--trainer.devices", "--model.help", "--data.help"):
        assert option in result.stdout


@pytest.mark.parametrize(
    ("flag", "cls"),
    [
        ("--model.help", SFTModule),
        ("--data.help", SFTDataModule),
        ("--model.help", GRPOModule),
        ("--data.help", RecyclingDataModule),
        ("--data.help", QADataModule),
        ("--data.help", EvalDataModule),
    ],
    ids=lambda x: getattr(x, "__name__", x),
)
def test_every_init_argument_has_a_documented_help_line(flag: str, cls: type) -> None:
    result = run_cli("fit", flag, f"{cls.__module__}.{cls.__qualname__}")
    assert result.returncode == 0, result.stderr
    prefix = flag.split(".")[0]
    for name in inspect.signature(cls.__init__).parameters:
        if name == "self":
            continue
        option = f"{prefix}.{name}"
        assert option in result.stdout, option
        # The line after the option name carries the docstring text, not only the type.
        block = result.stdout.split(f"  {option} ", 1)[1].split("\n  --", 1)[0]
        assert len(block.split("(type:")[0].split(maxsplit=1)) == 2, f"{option} has no description"


SYNTHETIC_STRATEGIES = {  # config: (data.strategy, model.oversample) its name and header promise
    "grpo": ("grpo", 1),
    "grpo-recycle": ("recycle", 2),
    "grpo-smollm2": ("recycle", 2),
    "dapo": ("dapo", 1),
    "bounded-dapo": ("bounded_dapo", 2),
}


@pytest.mark.parametrize("name", sorted(SYNTHETIC_STRATEGIES))
def test_each_grpo_config_runs_the_strategy_it_is_named_after(name: str) -> None:
    import yaml

    config = yaml.safe_load((ROOT / "configs" / "synthetic" / f"{name}.yaml").read_text())
    data, model = config["data"]["init_args"], config["model"]["init_args"]
    assert (data.get("strategy", "recycle"), model.get("oversample", 1)) == SYNTHETIC_STRATEGIES[name]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_parses(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lit_search_rl.lightning_cli import SearchRLCLI

    with pytest.raises(SystemExit) as done:  # in process: --print_config prints and exits
        SearchRLCLI(args=["fit", "--config", str(config), "--print_config"])
    assert done.value.code in (0, None)
    assert "class_path:" in capsys.readouterr().out


def test_sft_fit_runs_and_exports_a_loadable_policy(tmp_path: Path, world_dir: Path, model_dir: Path) -> None:
    export = tmp_path / "sft-model"
    result = run_cli(
        "fit",
        "--config", str(ROOT / "configs/synthetic/sft.yaml"),
        "--trainer.max_steps", "3",
        "--trainer.val_check_interval", "3",
        "--trainer.limit_val_batches", "1",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
        "--trainer.enable_progress_bar", "false",
        "--model.init_args.model", str(model_dir),
        "--model.init_args.export_dir", str(export),
        "--data.init_args.world", str(world_dir),
        "--data.init_args.batch_size", "4",
        "--data.init_args.val_size", "4",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    trained = AutoModelForCausalLM.from_pretrained(export)
    initial = AutoModelForCausalLM.from_pretrained(model_dir)
    changed = [n for n, p in trained.named_parameters() if not p.equal(dict(initial.named_parameters())[n])]
    assert changed, "three optimizer steps changed no weight"
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*")), "no TensorBoard log written"
