"""Retrieval: one interface (a batch of queries and k in, documents per query out), BM25 and dense
faiss backends, index folders, and a Search-R1-compatible HTTP server and client."""

from lit_search_rl.retrieval.base import Document, RetrievalError, Retriever

__all__ = ["Document", "RetrievalError", "Retriever"]
