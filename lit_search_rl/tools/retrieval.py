"""``lit-search-rl index`` (build an index folder) and ``lit-search-rl serve-retriever`` (serve it)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from lit_search_rl.tools.common import dataclass_from_args, make_parser


def index(argv: Sequence[str]) -> None:
    """Build a BM25 or dense index folder from a corpus in JSON lines."""
    from lit_search_rl.retrieval.dense import DenseConfig
    from lit_search_rl.retrieval.index import build_index

    parser = make_parser("index", 'Build a retrieval index folder from a corpus ({"id", "contents"} JSON lines).')
    parser.add_argument(
        "--corpus", type=Path, required=True, help='Corpus in JSON lines: {"id", "contents": "Title\\ntext"}.'
    )
    parser.add_argument("--kind", type=Literal["bm25", "dense"], required=True, help="Index kind.")
    parser.add_argument("--out", type=Path, required=True, help="Index folder to write.")
    parser.add_argument("--overwrite", action="store_true", help="Replace --out if it exists and is not empty.")
    parser.add_argument("--no_progress", action="store_true", help="Hide the progress bar.")
    parser.add_class_arguments(DenseConfig, None, as_group=False)
    args = parser.parse_args(list(argv))
    dense = dataclass_from_args(DenseConfig, args)
    manifest = build_index(args.corpus, args.out, args.kind, dense=dense, overwrite=args.overwrite,
                           progress=not args.no_progress)  # fmt: skip
    print(f"wrote {args.out}: {manifest['kind']} index of {manifest['num_docs']} passages "
          f"in {manifest['build_seconds']:.1f}s")  # fmt: skip


def serve_retriever(argv: Sequence[str]) -> None:
    """Serve an index folder over HTTP with the Search-R1 retrieval API."""
    from lit_search_rl.retrieval.cache import CachedRetriever
    from lit_search_rl.retrieval.index import load_retriever, read_manifest
    from lit_search_rl.retrieval.server import RetrievalServer, ServerLimits

    parser = make_parser(
        "serve-retriever", "Serve an index folder with the Search-R1 API (POST /retrieve, GET /health)."
    )
    parser.add_argument("--index", type=Path, required=True, help="Index folder written by `lit-search-rl index`.")
    parser.add_argument(
        "--host", type=str, default="127.0.0.1", help="Address to bind; loopback unless told otherwise."
    )
    parser.add_argument("--port", type=int, default=8000, help="Port to bind (0 picks a free one).")
    parser.add_argument("--cache_size", type=int, default=10000, help="Recent (query, topk) answers kept; 0 for none.")
    parser.add_argument("--device", type=str | None, default=None, help="Encoder device for dense indexes (cpu, cuda).")
    parser.add_class_arguments(ServerLimits, None, as_group=False)
    args = parser.parse_args(list(argv))
    manifest = read_manifest(args.index)
    limits = dataclass_from_args(ServerLimits, args)
    retriever = load_retriever(args.index, max_k=limits.max_topk, device=args.device)
    if args.cache_size > 0:
        retriever = CachedRetriever(retriever, args.cache_size)
    info = {"kind": manifest["kind"], "num_docs": manifest["num_docs"]}
    try:
        server = RetrievalServer(retriever, args.host, args.port, limits, info)
    except OSError as e:
        raise ValueError(f"--host {args.host} --port {args.port}: cannot bind ({e.strerror})") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    print(f"serving {args.index} ({manifest['kind']}, {manifest['num_docs']} passages) at {server.url}/retrieve",
          flush=True)  # fmt: skip
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        retriever.close()
