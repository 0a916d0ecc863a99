"""Queries per second of BM25, dense flat and dense HNSW, in process and over HTTP, at two corpus sizes.

Run: ``.venv/bin/python benchmarks/retrieval_qps.py`` (about 15 minutes on 2 CPU cores).

Corpora are synthetic-world passages (the first N rows of one generated world); queries are
the expert searches of its questions. All numbers come from one run, so compare ratios.

Deliberately approximate: encoding passages with MiniLM runs at about 30 passages/s on two
CPU cores, so only the first ``--encode_limit`` passages are really encoded. Larger dense
indexes repeat those embeddings with small Gaussian noise (re-normalised); faiss search cost
depends on the number and size of vectors, not on their source, and query encoding is real.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from lit_search_rl.data.synthetic.world import WorldConfig, generate_world
from lit_search_rl.io import write_jsonl
from lit_search_rl.retrieval.dense import DenseConfig
from lit_search_rl.retrieval.encoder import Encoder
from lit_search_rl.retrieval.http_client import HTTPRetriever
from lit_search_rl.retrieval.index import build_index, load_retriever


def world_for(passages: int, seed: int = 0):
    """A world of roughly ``passages`` passages with 300 test questions for queries."""
    scale = passages / 100_000
    return generate_world(WorldConfig(
        seed=seed, num_countries=max(6, int(60 * scale)), num_cities=max(30, int(3000 * scale)),
        num_people=int(31_000 * scale), num_companies=int(8_000 * scale), num_films=int(21_000 * scale),
        num_bands=int(6_000 * scale), num_distractors=int(5_000 * scale), num_sft=0, num_train=0, num_val=0,
        num_test=100,
    ))  # fmt: skip


def measure(retriever, queries: list[str], batch: int, k: int = 3) -> float:
    """Queries per second answering ``queries`` in batches of ``batch``."""
    retriever.search(queries[:batch], k)  # warm-up
    start = time.perf_counter()
    for i in range(0, len(queries), batch):
        retriever.search(queries[i : i + batch], k)
    return len(queries) / (time.perf_counter() - start)


def serve(index: Path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "lit_search_rl.cli", "serve-retriever", "--index", str(index), "--port", "0",
         "--cache_size", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    line = process.stdout.readline()
    return process, line.split(" at ")[1].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--encode_limit", type=int, default=10_000)
    parser.add_argument("--batch1_queries", type=int, default=128)
    parser.add_argument("--batch64_queries", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/retrieval_qps.json"))
    args = parser.parse_args()

    largest = max(args.sizes)
    world = world_for(int(largest * 1.05))  # a little extra, so that every size gets its full count
    rows = [p.to_row() for p in world.corpus.passages]
    if len(rows) < largest:
        raise SystemExit(f"the world has {len(rows)} passages, fewer than --sizes {largest}")
    queries = [s.query for qs in world.splits.values() for q in qs for st in q.steps for s in st.searches]
    queries = (queries * (1 + args.batch64_queries // len(queries)))[: args.batch64_queries]
    print(f"world: {len(rows)} passages, {len(queries)} queries", flush=True)

    encoder = Encoder()
    start = time.perf_counter()
    real = encoder.encode([r["contents"] for r in rows[: args.encode_limit]])
    encode_rate = len(real) / (time.perf_counter() - start)
    print(f"encoded {len(real)} passages at {encode_rate:.1f}/s", flush=True)
    rng = np.random.default_rng(0)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sorted(args.sizes):
            corpus = Path(tmp) / f"corpus-{size}.jsonl"
            write_jsonl(corpus, rows[:size])
            reps = -(-size // len(real))
            vectors = np.concatenate([real] + [real + rng.normal(0, 0.02, real.shape).astype(np.float32)
                                                for _ in range(reps - 1)])[:size]  # fmt: skip
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            for name, kind, dense in [("bm25", "bm25", None), ("dense-flat", "dense", DenseConfig(index_type="flat")),
                                      ("dense-hnsw", "dense", DenseConfig(index_type="hnsw"))]:  # fmt: skip
                folder = Path(tmp) / f"{name}-{size}"
                t0 = time.perf_counter()
                build_index(corpus, folder, kind, dense=dense, progress=False,
                            embeddings=vectors if kind == "dense" else None)  # fmt: skip
                build = time.perf_counter() - t0
                local = load_retriever(folder)
                row = {"backend": name, "passages": size, "build_s": round(build, 1)}
                row["inproc_b1"] = measure(local, queries[: args.batch1_queries], 1)
                row["inproc_b64"] = measure(local, queries, 64)
                local.close()
                process, url = serve(folder)
                try:
                    client = HTTPRetriever(url)
                    row["http_b1"] = measure(client, queries[: args.batch1_queries], 1)
                    row["http_b64"] = measure(client, queries, 64)
                    client.close()
                finally:
                    process.terminate()
                    process.wait()
                print(json.dumps(row), flush=True)
                results.append(row)

    print(f"\n{date.today()}, {platform.machine()}, {platform.processor() or 'cpu'}; passage encoding "
          f"{encode_rate:.1f}/s\n")  # fmt: skip
    print("| backend | passages | build (s) | in-process b=1 | in-process b=64 | HTTP b=1 | HTTP b=64 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['backend']} | {r['passages']:,} | {r['build_s']} | {r['inproc_b1']:.0f} | {r['inproc_b64']:.0f} | "
              f"{r['http_b1']:.0f} | {r['http_b64']:.0f} |")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": str(date.today()), "encode_rate": encode_rate, "rows": results}, indent=2))


if __name__ == "__main__":
    main()
