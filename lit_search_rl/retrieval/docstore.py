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

DOCS_FILE, OFFSETS_FILE = "docs.jsonl", "offsets.npy"


def read_corpus(path: Path, progress: bool = True) -> Iterator[dict[str, Any]]:
    """Stream the rows of a corpus in JSON lines (``{"id", "contents", ...}``), validating each.

    A row without ``id`` gets its 0-based row number as id. Raises ``ValueError`` naming the
    file and line of invalid JSON, a non-object, or a missing or non-string ``contents``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--corpus {path} does not exist")
    size = path.stat().st_size
    with path.open("rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc="corpus", disable=not progress) as bar:
        number = 0
        for number, line in enumerate(f, start=1):
            bar.update(len(line))
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{path}:{number}: not valid JSON ({getattr(e, 'msg', e)})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: a corpus row must be a JSON object")
            if not isinstance(row.get("contents"), str):
                raise ValueError(f"{path}:{number}: the row has no string field 'contents'")
            row["id"] = str(row.get("id", number - 1))
            yield row


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
