"""Bad settings of `lit-search-rl fit` fail at once, in one short line naming the option (or file and line)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lit_search_rl.cli import main, precheck

ROOT = Path(__file__).resolve().parents[1]
RECYCLE = str(ROOT / "configs/synthetic/grpo-recycle.yaml")
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI warns when it is given args while sys.argv holds pytest's own."""
    monkeypatch.setattr(sys, "argv", ["lit-search-rl"])


def fit_error(capsys: pytest.CaptureFixture[str], *args: str, config: str = RECYCLE) -> str:
    """The one line that ``lit-search-rl fit --config CONFIG ARGS`` prints, after checking it is one line.

    The config's validation files (the demo's) are dropped: the fast check would name them first where the demo
    has not run.
    """
    assert main(["fit", "--config", config, "--data.init_args.val_sets", "[]", *args]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith("lit-search-rl fit: error: ") and len(lines[0]) < 200, lines[0]
    assert "Union" not in lines[0] and "Namespace(" not in lines[0] and "usage:" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--model.init_args.group_size", "1"], ["model.group_size", "at least 2", "got 1"]),
        (["--model.init_args.batch_size", "0"], ["model.batch_size", "at least 1"]),
        (["--model.init_args.micro_batch_size", "3"], ["model.micro_batch_size", "must divide", "128"]),
        (["--data.init_args.strategy", "foo"], ["data.strategy", "recycle, grpo, dapo, bounded_dapo", "'foo'"]),
        (["--data.strategy=foo"], ["data.strategy", "recycle, grpo, dapo, bounded_dapo"]),
        (["--model.init_args.optimizer.learning_rate", "abc"], ["model.optimizer.learning_rate", "a number", "'abc'"]),
        (["--model.optimizer.learning_rate", "abc"], ["model.optimizer.learning_rate", "a number"]),
        (["--model.loss.clip_low=1.5"], ["model.loss.clip_low", "[0, 1)"]),
        (["--model.optimizer.adam_beta1=1"], ["model.optimizer.adam_beta1", "[0, 1)"]),
        (["--model.init_args.optimizer.adam_beta2", "-0.5"], ["model.optimizer.adam_beta2", "not be negative"]),
        (["--model.optimizer.adam_eps=0"], ["model.optimizer.adam_eps", "above 0"]),
        (["--model.learning_rate", "1e-5"], ["model.learning_rate was renamed model.optimizer.learning_rate"]),
        (["--data.init_args.recycled_weight", "-1"], ["data.recycled_weight", "[0, 1]", "-1"]),
        # a nested key or a flag without its value does not hide the other settings
        (["--model.init_args.rollout.max_turns", "5", "--model.group_size", "1"], ["model.group_size"]),
        (["--trainer.fast_dev_run", "--data.recycled_weight", "2"], ["data.recycled_weight", "got 2"]),
        # renamed options name their new name
        (
            ["--model.init_args.rollout.top_k", "3"],
            ["model.rollout.top_k was renamed model.rollout.documents_per_query"],
        ),
        (["--model.rollout.top_k=3"], ["model.rollout.top_k was renamed model.rollout.documents_per_query"]),
    ],
)
def test_bad_values_are_one_short_line_naming_the_option_before_any_heavy_import(
    capsys: pytest.CaptureFixture[str], args: list[str], needles: list[str]
) -> None:
    start = time.perf_counter()
    line = fit_error(capsys, *args)
    assert time.perf_counter() - start < 5, "the fast check should not import or load anything heavy"
    for needle in needles:
        assert needle in line, (needle, line)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        # Left to jsonargparse's own checks (nested keys, types the fast check does not know):
        # its layers of union types and its usage dump are taken off.
        (["--model.init_args.rollout.max_turns", "abc"], ["model.rollout.max_turns", "an integer", "'abc'"]),
        (["--model.init_args.dtype", "f8"], ["model.dtype", "float32, bfloat16, float16", "'f8'"]),
        (["--trainer.max_steps", "x"], ["trainer.max_steps", "an integer"]),
        (["--model.init_args.no_such_option", "3"], ["model.no_such_option", "not an option", "GRPOModule"]),
    ],
)
def test_parser_errors_are_one_short_line_without_the_usage(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], needles: list[str]
) -> None:
    line = fit_error(capsys, "--model.init_args.model", str(tmp_path), *args)  # a folder, for the fast check
    for needle in needles:
        assert needle in line, (needle, line)


def test_module_errors_raised_in_lightning_cli_are_not_wrapped(world_dir: Path, model_dir: Path) -> None:
    """Settings LightningCLI checks itself (also without the fast check) raise the module's own error."""
    from lit_search_rl.lightning_cli import SearchRLCLI

    common = ["fit", "--config", RECYCLE, "--model.init_args.model", str(model_dir),
              "--data.init_args.train", str(world_dir / "train.jsonl")]  # fmt: skip
    with pytest.raises(ValueError, match=r"^model\.group_size must be at least 2 \(got 1\)$"):
        SearchRLCLI(args=[*common, "--model.init_args.group_size", "1"])
    with pytest.raises(ValueError, match=r"^data\.recycled_weight must be in \[0, 1\] \(got -1"):
        SearchRLCLI(args=[*common, "--data.init_args.recycled_weight", "-1"])


def test_data_settings_are_checked_when_the_data_module_is_built_not_in_setup() -> None:
    from lit_search_rl.data.recycling_datamodule import RecyclingDataModule

    with pytest.raises(ValueError, match=r"data\.recycled_weight must be in \[0, 1\]"):
        RecyclingDataModule(train="no-such-file.jsonl", recycled_weight=-1.0)
    with pytest.raises(ValueError, match=r"data\.max_rounds must be at least 1"):
        RecyclingDataModule(train="no-such-file.jsonl", max_rounds=0)


def test_the_fast_check_imports_neither_lightning_nor_torch() -> None:
    code = ("import sys; from lit_search_rl.cli import main; "
            f"rc = main(['fit', '--config', {RECYCLE!r}, '--model.init_args.group_size', '1']); "
            "print(rc, [m for m in ('torch', 'lightning', 'transformers') if m in sys.modules])")  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.stdout.strip() == "2 []", result.stdout + result.stderr[-2000:]
    assert "model.group_size must be at least 2" in result.stderr
    assert time.perf_counter() - start < 10


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = Path(RECYCLE).read_text().splitlines()
    number = next(i for i, line in enumerate(lines, 1) if line.strip().startswith("warmup_steps:"))
    lines[number - 1] = "    warmup_steps: [2"  # an unclosed list
    bad = tmp_path / "bad.yaml"
    bad.write_text("\n".join(lines) + "\n")
    line = fit_error(capsys, config=str(bad))
    assert f"{bad}:{number + 1}: " in line and f"line {number}" in line, line
    assert "<unicode string>" not in line


def test_a_missing_config_file_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    line = fit_error(capsys, config="configs/no-such.yaml")
    assert "configs/no-such.yaml does not exist" in line


@pytest.mark.parametrize("model", ["./no-such-dir/model", "no-such-dir/sub/model", "runs/demo/no-such-model"])
def test_a_path_like_model_that_does_not_exist_is_a_missing_folder(
    capsys: pytest.CaptureFixture[str], model: str
) -> None:
    line = fit_error(capsys, "--model.init_args.model", model)
    assert f"model.model: folder {model} does not exist" in line


def test_an_unknown_hub_id_fails_at_once_when_the_hub_is_offline(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    line = fit_error(capsys, "--model.init_args.model", "no-such-dir/model")
    assert time.perf_counter() - start < 5
    assert "no folder no-such-dir/model" in line and "HF_HUB_OFFLINE" in line, line


def test_an_unknown_hub_id_fails_at_once_when_the_hub_cannot_be_reached(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.perf_counter()
    line = fit_error(capsys, "--model.init_args.model", "no-such-dir/model")
    assert time.perf_counter() - start < 15
    assert "no folder no-such-dir/model" in line and "cannot be reached" in line, line


def test_what_counts_as_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lit_search_rl.checks import looks_like_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for value in ("./model", "/abs/model", "~/model", "a/b/c", "runs/model", "C:\\models\\x"):
        assert looks_like_path(value), value
    for value in ("Qwen/Qwen3-1.7B", "gpt2", "no-such-dir/model"):
        assert not looks_like_path(value), value


def test_the_fast_check_names_the_same_strategies_as_the_registry() -> None:
    from lit_search_rl.checks import STRATEGY_NAMES
    from lit_search_rl.data.strategies import STRATEGIES

    assert set(STRATEGY_NAMES) == set(STRATEGIES)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_fast_check_accepts_every_shipped_config(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast check only ever refuses what the modules refuse: never a shipped config's settings."""
    from lit_search_rl.checks import check_settings
    from lit_search_rl.cli import precheck

    monkeypatch.setattr("lit_search_rl.checks.check_model_source", lambda value, flag: None)
    # The data files a config names are the user's to provide (the Qwen3 configs name Search-R1's).
    for check in ("check_paths", "check_train_rows", "check_eval_rows"):
        monkeypatch.setattr(f"lit_search_rl.checks.{check}", lambda *args: None)
    precheck(["fit", "--config", str(config)])
    raw = yaml.safe_load(config.read_text())
    for section in ("model", "data"):
        check_settings(section, raw[section]["class_path"], raw[section].get("init_args", {}))


def test_help_skips_the_fast_check_and_print_config_checks_only_the_files(tmp_path: Path) -> None:
    no_sets = ["--data.init_args.val_sets", "[]"]
    # --print_config shows what was given, even a value training would refuse...
    precheck(["fit", "--config", RECYCLE, "--model.init_args.group_size", "1", *no_sets, "--print_config"])
    precheck(["fit", "--config", RECYCLE, "--model.init_args.group_size", "1", "--help"])
    with pytest.raises(ValueError, match="model.group_size"):
        precheck(["fit", "--config", RECYCLE, "--model.init_args.group_size", "1", *no_sets])
    # ...but a file that is not there is named before anything prints.
    missing = str(tmp_path / "missing.jsonl")
    with pytest.raises(FileNotFoundError, match=r"data.init_args.train: .*missing.jsonl does not exist"):
        precheck(
            ["fit", "--config", RECYCLE, f"--data.init_args.train={missing}", *no_sets, "--print_config=skip_null"]
        )
    with pytest.raises(FileNotFoundError, match=r"data.init_args.train\[1\]: .*missing.jsonl does not exist"):
        train = str(ROOT / "configs" / "synthetic" / "sft.yaml")  # a file that is there
        precheck(["fit", "--config", RECYCLE, f"--data.init_args.train=[{train}, {missing}]", *no_sets])
    with pytest.raises(FileNotFoundError, match=r"data.init_args.val_sets\[0\].path: .*missing.jsonl"):
        precheck(
            ["fit", "--config", RECYCLE, "--data.init_args.val_sets", f'[{{"path": "{missing}"}}]', "--print_config"]
        )


def test_data_files_are_read_before_any_heavy_import(tmp_path: Path) -> None:
    """A missing or unreadable question file fails in about a second, not after Lightning's import."""
    (tmp_path / "empty.parquet").write_bytes(b"")
    (tmp_path / "train.jsonl").write_text('{"question": "q?", "golden_answers": ["a"]}\n{"question": "r?"}\n')
    cases = {
        "test": (["--data.init_args.test_sets", f'[{{"path": "{tmp_path / "nope.jsonl"}"}}]'],
                 "test_sets[0].path: " + str(tmp_path / "nope.jsonl") + " does not exist"),
        "validate": (["--data.init_args.val_sets", f'[{{"path": "{tmp_path / "empty.parquet"}"}}]'],
                     "empty.parquet: not a readable parquet file (Parquet file size is 0 bytes)"),
        "fit": ([f"--data.init_args.train={tmp_path / 'train.jsonl'}", "--data.init_args.val_sets=[]"],
                "data.train: " + str(tmp_path / "train.jsonl") + ": row 2 has no golden answers"),
    }  # fmt: skip
    for command, (args, needle) in cases.items():
        code = ("import sys; from lit_search_rl.cli import main; "
                f"rc = main([{command!r}, '--config', {RECYCLE!r}, '--model.init_args.model', {str(tmp_path)!r}, "
                f"*{args!r}]); print(rc, [m for m in ('torch', 'lightning') if m in sys.modules])")  # fmt: skip
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert result.stdout.strip() == "2 []", result.stdout + result.stderr[-2000:]
        assert needle in result.stderr, (command, result.stderr)


def test_a_later_config_or_class_replaces_what_the_fast_check_knows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lit_search_rl.cli import precheck

    monkeypatch.setattr("lit_search_rl.checks.check_model_source", lambda value, flag: None)
    override = tmp_path / "override.yaml"
    override.write_text("model:\n  init_args:\n    group_size: 8\n    micro_batch_size: 16\n")
    no_sets = ["--data.init_args.val_sets", "[]"]  # the demo's files need not exist here
    precheck(["fit", "--config", RECYCLE, "--model.init_args.group_size", "1", "--config", str(override), *no_sets])
    other = tmp_path / "other.yaml"
    other.write_text("model:\n  class_path: my_package.MyModule\n  init_args:\n    group_size: 1\n")
    precheck(["fit", "--config", RECYCLE, "--config", str(other), *no_sets])  # not our class: its own checks apply
    with pytest.raises(ValueError, match="model.micro_batch_size"):
        precheck(["fit", "--config", RECYCLE, "--config", str(override), "--model.micro_batch_size", "3"])


class Base:
    """A base class for the parser below."""


class Strict(Base):
    """A class that refuses a setting when it is built, as the modules do."""

    def __init__(self, size: int = 2) -> None:
        if size < 2:
            raise ValueError(f"model.size must be at least 2 (got {size})")


def test_an_error_raised_while_a_class_is_built_is_shown_without_jsonargparse_layers() -> None:
    from jsonargparse import ArgumentParser

    from lit_search_rl.tools.common import error_message

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model", type=Base | None)
    config = parser.parse_args(["--model", f"{__name__}.Strict", "--model.size", "1"])
    with pytest.raises(ValueError) as raised:
        parser.instantiate_classes(config)
    assert "Union" in str(raised.value)  # what jsonargparse raises: the error in its layers
    assert error_message(raised.value, "") == "model.size must be at least 2 (got 1)"


def test_an_unknown_reward_is_named_once_the_classes_are_resolved(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = ["--model.init_args.model", str(tmp_path), "--model.reward", "nope", "--data.init_args.val_sets", "[]"]
    assert main(["fit", "--config", RECYCLE, *args]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after Lightning's "Seed set to 0"
    assert line.startswith("lit-search-rl fit: error: model.reward: unknown reward 'nope'") and len(line) < 200
    assert "cover_em, em, f1" in line and "module:function" in line


def test_the_fast_check_leaves_reward_names_to_the_resolved_classes(tmp_path: Path) -> None:
    # tests.distributed_helpers registers "coin" when a callback of it is imported: the fast check must not refuse it.
    reward = ["--model.init_args.reward", "registered-by-an-imported-module"]
    precheck(["fit", "--config", RECYCLE, "--model.init_args.model", str(tmp_path), *reward,
              "--data.init_args.val_sets", "[]"])  # fmt: skip


def test_a_null_two_levels_down_is_given_as_a_mapping() -> None:
    from lit_search_rl.cli import nested_nulls_as_mappings

    given = ["fit", "--model.init_args.rollout.max_doc_chars=null", "--model.rollout.instruction", "~",
             "--model.init_args.rollout.max_turns=3", "--trainer.logger.init_args.save_dir=null",
             "--model.init_args.model=null", "--data.init_args.seed", "null", "--model.loss.kl_coef", "0"]  # fmt: skip
    assert nested_nulls_as_mappings(given) == [
        "fit", '--model.init_args.rollout={"max_doc_chars": null}', '--model.init_args.rollout={"instruction": null}',
        "--model.init_args.rollout.max_turns=3", "--trainer.logger.init_args.save_dir=null",
        "--model.init_args.model=null", "--data.init_args.seed", "null", "--model.loss.kl_coef", "0",
    ]  # fmt: skip


def test_a_null_for_a_rollout_field_reaches_the_module_as_none(
    world_dir: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """jsonargparse alone would give the text 'None' (an error for an integer field, "None" for a text one)."""
    args = ["fit", "--config", RECYCLE, "--model.init_args.model", str(model_dir), "--model.init_args.retriever",
            "empty://", "--data.init_args.train", str(world_dir / "train.jsonl"), "--data.init_args.val_sets=[]",
            "--data.init_args.test_sets=[]", "--model.init_args.rollout.max_doc_chars=null",
            "--model.init_args.rollout.instruction", "null", "--print_config"]  # fmt: skip
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code in (0, None)
    rollout = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["rollout"]
    assert rollout["max_doc_chars"] is None and rollout["instruction"] is None
    assert rollout["max_turns"] == 5 and rollout["documents_per_query"] == 1  # the config's other fields stay
