"""The corpus inside an index folder: rows by position, read from disk on demand.

Rows are kept as JSON lines with a byte-offset table, so a lookup reads only the rows it
needs and a corpus of millions of passages costs no memory until it is read. Reading the
input corpus validates every line and names the file and line of the first bad one.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lit_search_rl.io import is_json_array, json_error

DOCS_FILE, OFFSETS_FILE = "docs.jsonl", "offsets.npy"


CORPUS_LAYOUTS = (
    'JSON lines of {"id", "contents": "Title\\ntext"} (FlashRAG, Search-R1), or a JSON array of such rows or of '
    '{"title", "text"} passages (HippoRAG)'
)
"""The corpus files ``read_corpus`` accepts, as its errors name them."""


def read_corpus(path: Path, progress: bool = True) -> Iterator[dict[str, Any]]:
    """Stream the rows of a corpus (``CORPUS_LAYOUTS``) as ``{"id", "contents", ...}``, validating each.

    A passage with ``title`` and ``text`` but no ``contents`` gets ``contents = "title\\ntext"``; a row without
    ``id`` takes its ``idx`` or else its 0-based row number. Raises ``ValueError`` naming the file and line (or
    passage) of invalid JSON, a row that is not a passage, a file that is one JSON object, or a corpus
    without passages.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--corpus {path} does not exist")
    if is_json_array(path):
        yield from _array_rows(path)
        return
    size = path.stat().st_size
    count = 0
    with path.open("rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc="corpus", disable=not progress) as bar:
        for number, line in enumerate(f, start=1):
            bar.update(len(line))
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                _refuse_one_object(path, count)
                raise ValueError(f"{path}:{number}: not valid JSON ({json_error(e)})") from None
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{number}: not UTF-8 text ({e.reason} at byte {e.start})") from None
            if count == 0 and isinstance(row, dict) and _contents(row) is None:
                _refuse_one_object(path, count)
            yield _passage(row, f"{path}:{number}", number - 1)
            count += 1
    if count == 0:
        raise ValueError(f"--corpus {path} has no passages; a corpus is {CORPUS_LAYOUTS}")


def _array_rows(path: Path) -> Iterator[dict[str, Any]]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a valid JSON array ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not rows:
        raise ValueError(f"--corpus {path} has no passages (an empty JSON array)")
    for number, row in enumerate(rows, start=1):
        yield _passage(row, f"{path}: passage {number}", number - 1)


def _refuse_one_object(path: Path, rows_read: int) -> None:
    """Raise when the whole file is one JSON object (a dict of passages, say): no layout this reader accepts."""
    if rows_read or path.stat().st_size > 1 << 30:  # past the first row, or too large to parse here
        return
    try:
        whole = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return
    if isinstance(whole, dict):
        raise ValueError(f"--corpus {path} is one JSON object; a corpus is {CORPUS_LAYOUTS}")


def _contents(row: dict[str, Any]) -> str | None:
    if isinstance(row.get("contents"), str):
        return row["contents"]
    if isinstance(row.get("text"), str):
        title = row.get("title")
        return f"{title}\n{row['text']}" if isinstance(title, str) and title else row["text"]
    return None


def _passage(row: Any, where: str, number: int) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a corpus row must be a JSON object")
    contents = _contents(row)
    if contents is None:
        raise ValueError(f"{where}: the row has no string field 'contents' (nor 'text')")
    row["contents"] = contents
    row["id"] = str(row.get("id", row.get("idx", number)))
    return row


class DocStoreWriter:
    """Appends rows to ``docs.jsonl`` and records their offsets; ``close`` writes the table."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._file = (self.folder / DOCS_FILE).open("wb")
        self._offsets: list[int] = []
        self._rows = 0

    def add(self, row: dict[str, Any]) -> None:
        self._offsets.append(self._file.tell())
        self._rows += 1
        self._file.write(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")

    def __len__(self) -> int:
        return self._rows

    def close(self) -> None:
        self._offsets.append(self._file.tell())  # end of the last row
        self._file.close()
        np.save(self.folder / OFFSETS_FILE, np.asarray(self._offsets, dtype=np.int64))


class DocStore:
    """Read-only rows of an index folder, by position."""

    def __init__(self, folder: Path) -> None:
        folder = Path(folder)
        self._offsets = np.load(folder / OFFSETS_FILE, mmap_mode="r")
        self._file = (folder / DOCS_FILE).open("rb")
        size = os.fstat(self._file.fileno()).st_size
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else None

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def get(self, positions: Sequence[int]) -> list[dict[str, Any]]:
        """The rows at ``positions`` (0-based), in that order."""
        rows = []
        for i in positions:
            start, end = int(self._offsets[i]), int(self._offsets[i + 1])
            rows.append(json.loads(self._map[start:end]))
        return rows

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
        self._file.close()
