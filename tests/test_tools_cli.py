"""The tools behind `lit-search-rl`, run as a user runs them: exit codes, one-line errors, no partial output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lit_search_rl.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lit_search_rl.cli", *args], capture_output=True, text=True, timeout=300
    )


SIZES = {"num_people": 20, "num_films": 8, "num_companies": 6, "num_bands": 4, "num_cities": 6, "num_countries": 2,
         "num_sft": 30, "num_train": 30, "num_val": 3, "num_test": 3}  # fmt: skip
SMALL = [arg for name, value in SIZES.items() for arg in (f"--{name}", str(value))]


def test_synth_writes_a_world_and_summarises_it(tmp_path: Path) -> None:
    result = run_cli("synth", "--out", str(tmp_path / "w"), *SMALL)
    assert result.returncode == 0, result.stderr
    assert "passages" in result.stdout and "sft" in result.stdout
    manifest = json.loads((tmp_path / "w" / "world.json").read_text())
    assert manifest["counts"]["sft"] == 30 and manifest["config"]["num_people"] == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # nothing left aside


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--num_people", "0"], "--num_people"),
        (["--num_films", "-3"], "--num_films"),
        (["--max_hops", "7"], "--max_hops"),
        (["--num_people", "many"], "num_people"),
        (["--num_train", "100000"], "--num_train"),
        (["--no_such_option", "1"], "--no_such_option"),
    ],
)
def test_synth_bad_settings_fail_in_one_line_and_write_nothing(tmp_path: Path, args: list[str], needle: str) -> None:
    result = run_cli("synth", "--out", str(tmp_path / "w"), *SMALL, *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("lit-search-rl synth: error:"), result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_synth_refuses_a_non_empty_folder_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "w"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_cli("synth", "--out", str(out), *SMALL)
    assert result.returncode == 2 and "--overwrite" in result.stderr and "--out" in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    result = run_cli("synth", "--out", str(out), *SMALL, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert (out / "world.json").is_file() and not (out / "keep.txt").exists()


def test_a_failed_overwrite_keeps_the_old_world(tmp_path: Path) -> None:
    out = tmp_path / "w"
    assert run_cli("synth", "--out", str(out), *SMALL).returncode == 0
    before = (out / "corpus.jsonl").read_bytes()
    result = run_cli("synth", "--out", str(out), *SMALL, "--overwrite", "--num_train", "100000")
    assert result.returncode == 2
    assert (out / "corpus.jsonl").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


def test_tiny_model_bad_input(tmp_path: Path, world_dir: Path) -> None:
    result = run_cli("tiny-model", "--world", str(tmp_path / "missing"), "--out", str(tmp_path / "m"))
    assert result.returncode == 2 and "--world" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = run_cli("tiny-model", "--world", str(world_dir), "--out", str(tmp_path / "m"), "--num_kv_heads", "3")
    assert result.returncode == 2 and "--num_kv_heads" in result.stderr
    assert not (tmp_path / "m").exists()


def test_usage_and_unknown_command(capsys: pytest.CaptureFixture) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "synth", "tiny-model", "demo"):
        assert f"  {command} " in out
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
