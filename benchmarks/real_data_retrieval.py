"""Retrieval on real data: MuSiQue supporting-paragraph recall, and index build speed on Wikipedia-2018.

Run: ``.venv/bin/python benchmarks/real_data_retrieval.py`` (about 3 minutes on 2 CPU cores).

MuSiQue (``musique-100.jsonl`` with the 1,890 paragraphs of ``musique-100-corpus.jsonl``): each
question's decomposition gives its sub-questions; ``#n`` in a sub-question is replaced by the
answer of sub-question n, as a searcher who answered the earlier hops would ask. Recall@k of a
question is the share of its supporting titles found among the top k passages of all its
sub-questions; hit@k of a sub-question is whether any supporting title is in its own top k.

Wikipedia-2018 (``wiki18-sample-1000.jsonl``, quoted titles): both backends index it; the 112
questions of ``searchr1-7datasets-val112.parquet`` are the queries for the speed figure.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from lit_search_rl.io import read_jsonl
from lit_search_rl.retrieval.index import build_index, load_retriever

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def sub_questions(row: dict) -> list[str]:
    """The decomposition's sub-questions with ``#n`` replaced by the n-th answer."""
    steps = row["metadata"]["question_decomposition"]
    answers = [s["answer"] for s in steps]
    return [re.sub(r"#(\d+)", lambda m: answers[int(m.group(1)) - 1], s["question"]) for s in steps]


def musique_recall(index: Path, rows: list[dict], ks: tuple[int, ...] = (3, 5)) -> dict[str, float]:
    retriever = load_retriever(index)
    per_question = [sub_questions(r) for r in rows]
    flat = [q for qs in per_question for q in qs]
    results = retriever.search(flat, max(ks))
    out: dict[str, float] = {}
    for k in ks:
        recall, hits, pos = [], [], 0
        for row, qs in zip(rows, per_question, strict=True):
            gold = set(row["metadata"]["supporting_titles"])
            found: set[str] = set()
            for docs in results[pos : pos + len(qs)]:
                titles = {d.title for d in docs[:k]}
                hits.append(bool(titles & gold))
                found |= titles
            pos += len(qs)
            recall.append(len(found & gold) / len(gold))
        out[f"recall@{k}"] = sum(recall) / len(recall)
        out[f"subq_hit@{k}"] = sum(hits) / len(hits)
    retriever.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/real_data_retrieval.json"))
    args = parser.parse_args()
    rows = list(read_jsonl(args.data / "musique-100.jsonl"))
    questions = pq.read_table(args.data / "searchr1-7datasets-val112.parquet", columns=["question"]).column(0)
    questions = [str(q) for q in questions.to_pylist()]
    report = {"musique": {}, "wiki18": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("bm25", "dense"):
            for name, corpus in (("musique", "musique-100-corpus.jsonl"), ("wiki18", "wiki18-sample-1000.jsonl")):
                folder = Path(tmp) / f"{name}-{kind}"
                manifest = build_index(args.data / corpus, folder, kind, progress=False)
                entry = {"passages": manifest["num_docs"], "build_s": manifest["build_seconds"]}
                entry["passages_per_s"] = round(manifest["num_docs"] / max(manifest["build_seconds"], 1e-9), 1)
                if name == "musique":
                    entry.update(musique_recall(folder, rows))
                else:
                    retriever = load_retriever(folder)
                    retriever.search(questions[:8], 3)
                    start = time.perf_counter()
                    for i in range(0, len(questions), 64):
                        retriever.search(questions[i : i + 64], 3)
                    entry["qps_b64"] = round(len(questions) / (time.perf_counter() - start), 1)
                    [top] = retriever.search([questions[0]], 1)
                    entry["example"] = {"query": questions[0], "top_title": top[0].title if top else None}
                    retriever.close()
                report[name][kind] = entry
                print(name, kind, json.dumps(entry), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("\n| corpus | backend | passages | build (s) | recall@3 | recall@5 | sub-question hit@3 | hit@5 |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind, e in report["musique"].items():
        scores = " | ".join(f"{e[m]:.3f}" for m in ("recall@3", "recall@5", "subq_hit@3", "subq_hit@5"))
        print(f"| MuSiQue-100 | {kind} | {e['passages']} | {e['build_s']} | {scores} |")
    print("\n| corpus | backend | passages | build (s) | passages/s | queries/s (b=64) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for kind, e in report["wiki18"].items():
        print(
            f"| wiki-18 sample | {kind} | {e['passages']} | {e['build_s']} | {e['passages_per_s']} | {e['qps_b64']} |"
        )


if __name__ == "__main__":
    main()
