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


def build_bm25(texts: list[str], folder: Path, k1: float = 1.5, b: float = 0.75) -> dict:
    """Index ``texts`` (one per corpus row, in row order) and save to ``folder/bm25``; returns the settings."""
    index = bm25s.BM25(k1=k1, b=b)
    index.index(bm25s.tokenize(texts, stopwords=STOPWORDS, show_progress=False), show_progress=False)
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
        k = min(k, len(self.store))
        positions, scores = self.index.retrieve(_tokenize(queries), k=k, show_progress=False)  # (Q, k), (Q, k)
        results = []
        for row_positions, row_scores in zip(positions, scores, strict=True):
            keep = [(int(p), float(s)) for p, s in zip(row_positions, row_scores, strict=True) if s > 0]
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
        self.index = bm25s.BM25(k1=k1, b=b)
        texts = [str(r.get("contents", "")) for r in self.rows]
        self.index.index(bm25s.tokenize(texts, stopwords=STOPWORDS, show_progress=False), show_progress=False)

    def _search(self, queries: list[str], k: int) -> list[list[Document]]:
        k = min(k, len(self.rows))
        positions, scores = self.index.retrieve(_tokenize(queries), k=k, show_progress=False)  # (Q, k), (Q, k)
        return [
            [Document.from_row(self.rows[int(p)], float(s)) for p, s in zip(row_p, row_s, strict=True) if s > 0]
            for row_p, row_s in zip(positions, scores, strict=True)
        ]


__all__ = ["BM25Retriever", "InMemoryBM25", "build_bm25"]
