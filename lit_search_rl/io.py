"""Small file helpers shared by the tools: JSON lines, and folders that appear whole or not at all."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


def read_jsonl(path: Path) -> Iterator[dict]:
    """Rows of a JSON-lines file; a bad line raises ``ValueError`` naming file and line."""
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not valid JSON ({e.msg})") from None


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Write rows as JSON lines, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to a temporary sibling and rename it over ``path``, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.partial"
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)  # atomic on one file system, and replaces an existing file on Windows too
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def check_output_dir(out: Path, overwrite: bool, flag: str = "--out") -> None:
    """Refuse an output path that is a file, or a non-empty folder without ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{flag} {out} exists and is not empty; pass --overwrite to replace it")


@contextmanager
def atomic_output_dir(out: Path, overwrite: bool = False, flag: str = "--out") -> Iterator[Path]:
    """Yield a temporary sibling folder to write into; on success it replaces ``out``, on failure it is removed.

    Readers therefore see the old folder or the complete new one, never a half-written one.
    """
    out = Path(out)
    check_output_dir(out, overwrite, flag)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
