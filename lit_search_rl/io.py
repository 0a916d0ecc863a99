"""Small file helpers shared by the tools: JSON lines, and folders that appear whole or not at all."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


def json_error(error: json.JSONDecodeError) -> str:
    """What is wrong with a JSON text and where: ``Expecting ',' delimiter at column 31``."""
    at = "" if error.msg.endswith(" at") else " at"  # "Invalid control character at" names no place itself
    return f"{error.msg}{at} column {error.colno}"


def read_jsonl(path: Path) -> Iterator[dict]:
    """Rows of a JSON-lines file; a bad line raises ``ValueError`` naming file and line."""
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not valid JSON ({json_error(e)})") from None


def is_json_array(path: Path) -> bool:
    """Whether the file's first non-blank character opens a JSON array (a JSON-lines row is an object)."""
    with Path(path).open("rb") as f:
        while chunk := f.read(4096):
            if chunk.strip():
                return chunk.lstrip().startswith(b"[")
    return False


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


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # no glibc 2.28+
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):  # the file system cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(a))


def _siblings(out: Path) -> tuple[Path, Path]:
    """The folder being written and the old folder set aside, both beside ``out``."""
    return out.parent / f".{out.name}.partial", out.parent / f".{out.name}.old"


def recover_output_dir(out: Path) -> None:
    """Finish or undo a replacement of ``out`` that was killed half-way, and remove its leftovers.

    Only a kill between setting the old folder aside and moving the new one in (on file systems
    without an atomic exchange) leaves ``out`` missing; the old folder is then put back.
    """
    out = Path(out)
    tmp, old = _siblings(out)
    if old.is_dir() and not out.exists():
        os.rename(old, out)
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def atomic_output_dir(out: Path, overwrite: bool = False, flag: str = "--out") -> Iterator[Path]:
    """Yield a temporary sibling folder to write into; on success it replaces ``out``, on failure it is removed.

    Readers therefore see the old folder or the complete new one, never a half-written one, even
    after a kill at any point: the two folders are exchanged in one step where the file system
    can (Linux), otherwise the old one is renamed aside before the new one is renamed in, and a
    later call puts it back if the kill came in between.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    recover_output_dir(out)
    check_output_dir(out, overwrite, flag)
    tmp, old = _siblings(out)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists() and _exchange(tmp, out):
        shutil.rmtree(tmp)  # now the old folder
        return
    if out.exists():
        os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
