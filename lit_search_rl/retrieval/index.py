"""Index folders: build one from a corpus, and open the retriever it holds.

An index folder holds the corpus rows (``docs.jsonl`` and ``offsets.npy``), the backend's
files, and ``index.json``, which records how it was built (kind, corpus, settings, sizes,
time), so a server can be started from the folder alone. The folder is written aside and
renamed into place: a bad corpus line leaves no half-written index.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lit_search_rl.io import atomic_output_dir
from lit_search_rl.retrieval.base import Retriever
from lit_search_rl.retrieval.docstore import DocStoreWriter, read_corpus

MANIFEST = "index.json"
FORMAT_VERSION = 1
IndexKind = Literal["bm25", "dense"]


def _rows_into_store(corpus: Path, store: DocStoreWriter, progress: bool) -> Iterator[str]:
    for row in read_corpus(corpus, progress=progress):
        store.add(row)
        yield row["contents"]


def _batched(texts: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def build_index(
    corpus: Path,
    out: Path,
    kind: IndexKind,
    dense: Any = None,
    overwrite: bool = False,
    progress: bool = True,
    embeddings: np.ndarray | None = None,
) -> dict:
    """Build a ``kind`` index of ``corpus`` into ``out``; ``dense`` is a ``DenseConfig`` for dense indexes.

    ``embeddings`` (N, dim), row-aligned with the corpus and unit-norm, skips encoding the passages
    (for corpora whose embeddings were computed elsewhere); queries are still encoded with ``dense.encoder``.
    """
    start = time.perf_counter()
    with atomic_output_dir(out, overwrite) as tmp:
        store = DocStoreWriter(tmp)
        texts = _rows_into_store(Path(corpus), store, progress)
        if kind == "bm25":
            from lit_search_rl.retrieval.bm25 import build_bm25

            settings = build_bm25(list(texts), tmp)
        elif kind == "dense":
            from lit_search_rl.retrieval.dense import DenseConfig, build_dense, save_faiss_index
            from lit_search_rl.retrieval.encoder import default_encoder_path

            dense = dense or DenseConfig()
            if embeddings is None:
                settings = build_dense(_batched(texts, dense.batch_size), tmp, dense)
            else:
                count = sum(1 for _ in texts)
                if len(embeddings) != count:
                    raise ValueError(f"embeddings has {len(embeddings)} rows but --corpus {corpus} has {count}")
                settings = save_faiss_index(embeddings, tmp, dense, dense.encoder or default_encoder_path())
        else:
            raise ValueError(f"--kind must be bm25 or dense (got {kind!r})")
        store.close()
        if len(store) == 0:
            raise ValueError(f"--corpus {corpus} has no rows")
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "corpus": str(Path(corpus).resolve()),
            "num_docs": len(store),
            "settings": settings,
            "build_seconds": round(time.perf_counter() - start, 2),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def read_manifest(folder: Path) -> dict:
    """The ``index.json`` of an index folder; a clear error when the folder is not one."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"--index {folder} is not an index folder (no {MANIFEST}); build one with `lit-search-rl index`"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def load_retriever(folder: Path, max_k: int = 100, device: str | None = None) -> Retriever:
    """Open the retriever of an index folder."""
    manifest = read_manifest(folder)
    if manifest["kind"] == "bm25":
        from lit_search_rl.retrieval.bm25 import BM25Retriever

        return BM25Retriever(folder, max_k=max_k)
    from lit_search_rl.retrieval.dense import DenseRetriever

    return DenseRetriever(folder, manifest["settings"], max_k=max_k, device=device)
