"""Folders replaced whole: a kill at any point of the swap leaves the complete old or the complete new folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lit_search_rl.io import atomic_output_dir

OLD = {"config.json": "old config", "tokenizer.json": "old tokenizer", "model.safetensors": "old weights"}
NEW = {"config.json": "new config", "tokenizer.json": "new tokenizer", "model.safetensors": "new weights",
       "extra.txt": "new extra"}  # fmt: skip

# Runs one replacement in a child process that SIGKILLs itself at file-system operation number KILL_AT
# (before it when KILL_WHEN is "before", after it otherwise), as a scheduler's kill -9 would.
CHILD = textwrap.dedent("""
    import json, os, shutil, signal, sys
    from pathlib import Path
    import lit_search_rl.io as io

    out, kill_at, when, fallback = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
    calls = [0]

    def killing(fn):
        def wrapper(*args, **kwargs):
            calls[0] += 1
            if calls[0] == kill_at and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            result = fn(*args, **kwargs)
            if calls[0] == kill_at and when == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return wrapper

    if fallback:
        io._exchange = lambda a, b: False  # a file system without an atomic exchange
    if hasattr(io, "_exchange"):
        io._exchange = killing(io._exchange)
    os.rename = killing(os.rename)
    os.replace = killing(os.replace)
    shutil.rmtree = killing(shutil.rmtree)
    with io.atomic_output_dir(out, overwrite=True) as tmp:
        for name, text in json.loads(sys.argv[5]).items():
            (tmp / name).write_text(text)
    print("CALLS", calls[0])
""")


def write(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def contents(folder: Path) -> dict[str, str] | None:
    if not folder.is_dir():
        return None
    return {p.name: p.read_text() for p in folder.iterdir()}


def run_child(out: Path, kill_at: int, when: str, fallback: bool) -> subprocess.CompletedProcess:
    args = [sys.executable, "-c", CHILD, str(out), str(kill_at), when, "1" if fallback else "0", json.dumps(NEW)]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("fallback", [False, True], ids=["exchange", "rename-aside"])
def test_a_kill_at_any_point_of_the_swap_leaves_old_or_new(tmp_path: Path, fallback: bool) -> None:
    out = tmp_path / "run0" / "export"
    write(out, OLD)
    done = run_child(out, 0, "never", fallback)
    assert done.returncode == 0, done.stderr
    assert contents(out) == NEW
    operations = int(done.stdout.split("CALLS")[1])
    assert operations >= 2

    for kill_at in range(1, operations + 1):
        for when in ("before", "after"):
            out = tmp_path / f"kill-{kill_at}-{when}" / "export"
            write(out, OLD)
            killed = run_child(out, kill_at, when, fallback)
            assert killed.returncode == -signal.SIGKILL, killed.stderr
            if not fallback:
                # With an atomic exchange the folder is whole at every instant.
                assert contents(out) in (OLD, NEW), (kill_at, when)
            # The next replacement first puts back an old folder left aside, then clears the leftovers.
            with atomic_output_dir(out, overwrite=True) as tmp:
                assert contents(out) in (OLD, NEW), (kill_at, when)
                write(tmp, {"config.json": "third"})
            assert contents(out) == {"config.json": "third"}
            assert sorted(p.name for p in out.parent.iterdir()) == ["export"], (kill_at, when)


def test_a_failed_write_keeps_the_old_folder(tmp_path: Path) -> None:
    out = tmp_path / "export"
    write(out, OLD)
    with pytest.raises(RuntimeError), atomic_output_dir(out, overwrite=True) as tmp:
        write(tmp, {"config.json": "half"})
        raise RuntimeError("disk full")
    assert contents(out) == OLD
    assert sorted(os.listdir(tmp_path)) == ["export"]
