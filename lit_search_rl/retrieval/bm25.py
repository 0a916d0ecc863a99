"""BM25 over the corpus with ``bm25s`` (sparse, exact, no model needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import bm25s

from lit_search_rl.retrieval.base import Document, Retriever
from lit_search_rl.retrieval.docstore import DocStore

BM25_DIR = "bm25"
STOPWORDS = "en"


def _tokenize(texts: list[str]) -> list[list[str]]:
    return bm25s.tokenize(texts, stopwords=STOPWORDS, return_ids=False, show_progress=False)


def _indexed(texts: list[str], k1: float, b: float) -> bm25s.BM25:
    index = bm25s.BM25(k1=k1, b=b)
    index.index(bm25s.tokenize(texts, stopwords=STOPWORDS, show_progress=False), show_progress=False)
    return index


def _ranked(index: bm25s.BM25, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
    """(corpus position, score) of each query's top ``k``, best first; score-0 documents (no shared term) left out."""
    positions, scores = index.retrieve(_tokenize(queries), k=k, show_progress=False)  # (Q, k), (Q, k)
    return [
        [(int(p), float(s)) for p, s in zip(row_p, row_s, strict=True) if s > 0]
        for row_p, row_s in zip(positions, scores, strict=True)
    ]


def build_bm25(texts: list[str], folder: Path, k1: float = 1.5, b: float = 0.75) -> dict:
    """Index ``texts`` (one per corpus row, in row order) and save to ``folder/bm25``; returns the settings."""
    index = _indexed(texts, k1, b)
    index.save(Path(folder) / BM25_DIR, show_progress=False)
    return {"k1": k1, "b": b, "stopwords": STOPWORDS}


class BM25Retriever(Retriever):
    """BM25 search over an index folder built by ``lit-search-rl index --kind bm25``.

    Documents with score 0 share no term with the query and are left out, so a query of
    unknown words gets fewer than ``k`` documents rather than arbitrary ones.
    """

    def __init__(self, folder: Path, max_k: int = 100) -> None:
        super().__init__()
        self.max_k = max_k
        self.store = DocStore(folder)
        self.index = bm25s.BM25.load(Path(folder) / BM25_DIR, mmap=True, show_progress=False)

    def _search(self, queries: list[str], k: int) -> list[list[Document]]:
        results = []
        for keep in _ranked(self.index, queries, min(k, len(self.store))):
            rows = self.store.get([p for p, _ in keep])
            results.append([Document.from_row(r, s) for r, (_, s) in zip(rows, keep, strict=True)])
        return results

    def close(self) -> None:
        self.store.close()


class InMemoryBM25(Retriever):
    """BM25 over corpus rows held in memory (no index folder), with the same scoring as ``BM25Retriever``.

    For corpora built on the fly, such as a freshly generated synthetic world whose expert
    trajectories are rendered with the documents a real search would return.
    """

    def __init__(self, rows: Sequence[dict], k1: float = 1.5, b: float = 0.75, max_k: int = 100) -> None:
        super().__init__()
        if not rows:
            raise ValueError("InMemoryBM25 needs at least one corpus row")
        self.max_k = max_k
        self.rows = list(rows)
        self.index = _indexed([str(r.get("contents", "")) for r in self.rows], k1, b)

    def _search(self, queries: list[str], k: int) -> list[list[Document]]:
        return [
            [Document.from_row(self.rows[p], s) for p, s in keep]
            for keep in _ranked(self.index, queries, min(k, len(self.rows)))
        ]


__all__ = ["BM25Retriever", "InMemoryBM25", "build_bm25"]
