"""Dense retrieval with faiss: flat inner product, HNSW, or IVF-PQ over unit-norm embeddings.

Embeddings are L2-normalised, so inner product is cosine similarity. On a machine with
``faiss-gpu`` and GPUs, flat and IVF-PQ indexes are moved to the GPUs and sharded across all
of them; HNSW has no GPU implementation in faiss and stays on the CPU.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

from lit_search_rl.checks import require_at_least
from lit_search_rl.retrieval.base import Document, Retriever, raise_if_stopped
from lit_search_rl.retrieval.docstore import DocStore
from lit_search_rl.retrieval.encoder import Encoder

log = logging.getLogger(__name__)
FAISS_FILE = "faiss.index"


@dataclass
class DenseConfig:
    """How a dense index is built and searched."""

    encoder: str | None = None
    """Encoder folder or Hub name (e.g. ``intfloat/e5-base-v2``); unset for the offline all-MiniLM-L6-v2."""
    index_type: Literal["flat", "hnsw", "ivfpq"] = "flat"
    """faiss index: exact ``flat`` inner product, graph-based ``hnsw``, or compressed ``ivfpq``."""
    query_prefix: str = ""
    """Text put before every query (``"query: "`` for e5 models)."""
    passage_prefix: str = ""
    """Text put before every passage (``"passage: "`` for e5 models)."""
    max_length: int = 256
    """Encoder tokens per text."""
    batch_size: int = 64
    """Texts per encoder forward pass."""
    hnsw_m: int = 32
    """HNSW: neighbours per node."""
    hnsw_ef_construction: int = 200
    """HNSW: candidate list size while building."""
    hnsw_ef_search: int = 128
    """HNSW: candidate list size while searching (higher is slower and more exact)."""
    ivf_nlist: int = 1024
    """IVF-PQ: number of coarse clusters (reduced for small corpora so that each gets training points)."""
    ivf_nprobe: int = 32
    """IVF-PQ: clusters visited per query."""
    pq_m: int = 16
    """IVF-PQ: sub-quantizers; must divide the embedding dimension."""
    pq_nbits: int = 8
    """IVF-PQ: bits per sub-quantizer code (reduced for small corpora)."""
    use_gpu: bool = True
    """Move the index to all GPUs when faiss-gpu and GPUs are present."""

    def validate(self) -> None:
        require_at_least(self, ("max_length", "batch_size", "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search",
                                "ivf_nlist", "ivf_nprobe", "pq_m", "pq_nbits"))  # fmt: skip


def _new_index(config: DenseConfig, dim: int, num_vectors: int) -> tuple[faiss.Index, dict[str, Any]]:
    ip = faiss.METRIC_INNER_PRODUCT
    if config.index_type == "flat":
        return faiss.IndexFlatIP(dim), {}
    if config.index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, ip)
        index.hnsw.efConstruction = config.hnsw_ef_construction
        return index, {}
    if dim % config.pq_m:
        raise ValueError(f"--pq_m {config.pq_m} must divide the embedding dimension {dim}")
    # faiss wants about 39 training points per cluster and 2**nbits per PQ code book.
    nlist = max(1, min(config.ivf_nlist, num_vectors // 39))
    nbits = max(1, min(config.pq_nbits, int(math.log2(max(2, num_vectors))) - 1))
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, config.pq_m, nbits, ip)
    return index, {"ivf_nlist_used": nlist, "pq_nbits_used": nbits}


def build_dense(batches: Iterable[list[str]], folder: Path, config: DenseConfig) -> dict:
    """Encode passage batches (in row order), build the faiss index and save it; returns the settings."""
    config.validate()
    encoder = Encoder(config.encoder, config.max_length, config.batch_size)
    chunks = [encoder.encode(texts, config.passage_prefix) for texts in batches]
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, encoder.dim), dtype=np.float32)  # (N, dim)
    return save_faiss_index(vectors, folder, config, encoder.name_or_path)


def save_faiss_index(vectors: np.ndarray, folder: Path, config: DenseConfig, encoder: str) -> dict:
    """Build the configured faiss index over (N, dim) unit vectors, save it, and return the settings."""
    index, used = _new_index(config, vectors.shape[1], len(vectors))
    if not index.is_trained:
        index.train(vectors)
    index.add(vectors)
    faiss.write_index(index, str(Path(folder) / FAISS_FILE))
    return {**asdict(config), "encoder": encoder, "dim": int(vectors.shape[1]), "pooling": "mean",
            "normalize": True, **used}  # fmt: skip


def _to_gpus(index: faiss.Index, index_type: str) -> faiss.Index:
    if not hasattr(faiss, "index_cpu_to_all_gpus") or faiss.get_num_gpus() == 0:
        return index
    if index_type == "hnsw":
        log.info("faiss has no GPU HNSW; the index stays on the CPU")
        return index
    options = faiss.GpuMultipleClonerOptions()
    options.shard = True  # split the vectors across GPUs instead of copying all to each
    options.useFloat16 = True
    return faiss.index_cpu_to_all_gpus(index, co=options)


class DenseRetriever(Retriever):
    """Dense search over an index folder built by ``lit-search-rl index --kind dense``."""

    def __init__(self, folder: Path, settings: dict[str, Any], max_k: int = 100, device: str | None = None) -> None:
        super().__init__()
        self.max_k = max_k
        self.settings = settings
        self.store = DocStore(folder)
        self.encoder = Encoder(settings["encoder"], settings["max_length"], settings["batch_size"], device)
        index = faiss.read_index(str(Path(folder) / FAISS_FILE))
        if settings["index_type"] == "hnsw":
            index.hnsw.efSearch = settings["hnsw_ef_search"]
        elif settings["index_type"] == "ivfpq":
            index.nprobe = settings["ivf_nprobe"]
        self.index = _to_gpus(index, settings["index_type"]) if settings.get("use_gpu", True) else index

    def _search(self, queries: list[str], k: int) -> list[list[Document]]:
        vectors = self.encoder.encode(queries, self.settings["query_prefix"])  # (Q, dim)
        raise_if_stopped()
        scores, positions = self.index.search(vectors, min(k, len(self.store)))  # (Q, k), (Q, k)
        results = []
        for row_positions, row_scores in zip(positions, scores, strict=True):
            keep = [(int(p), float(s)) for p, s in zip(row_positions, row_scores, strict=True) if p >= 0]
            rows = self.store.get([p for p, _ in keep])
            results.append([Document.from_row(r, s) for r, (_, s) in zip(rows, keep, strict=True)])
        return results

    def close(self) -> None:
        self.store.close()
