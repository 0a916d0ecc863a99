"""``lit-search-rl demo``: the main job on the embedded default, run by ``make demo``.

Today it generates the synthetic world and the tiny model and prints what they hold and
what to run next. Everything lands in one run folder (``runs/demo`` by default); each run
replaces the world and the model in it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from lit_search_rl.tools.common import make_parser


def demo(argv: Sequence[str]) -> None:
    """Generate the world and the tiny model into ``--out`` and print a summary."""
    from lit_search_rl.data.synthetic.expert import gold_documents, render_trajectory, steps_from_rows
    from lit_search_rl.data.synthetic.world import WorldConfig, generate_world, write_world
    from lit_search_rl.io import read_jsonl
    from lit_search_rl.models.tiny import TinyModelConfig, create_tiny_model

    parser = make_parser("demo", "Run the main job on the embedded default (synthetic world, tiny model).")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="Run folder; its world and model are replaced on every run."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the world and the model.")
    args = parser.parse_args(list(argv))
    out: Path = args.out

    start = time.perf_counter()
    world_dir, model_dir = out / "world", out / "tiny-model"
    manifest = write_world(generate_world(WorldConfig(seed=args.seed)), world_dir, overwrite=True)
    model = create_tiny_model(world_dir, model_dir, TinyModelConfig(seed=args.seed), overwrite=True)
    elapsed = time.perf_counter() - start

    counts = manifest["counts"]
    print(f"\nlit-search-rl demo: done in {elapsed:.1f}s\n")
    print(f"world       {world_dir}  ({counts['entities']} entities, {counts['passages']} passages)")
    size = f"Qwen3, {model['parameters'] / 1e6:.2f}M parameters, vocabulary {model['vocab_size']}"
    print(f"tiny model  {model_dir}  ({size})")
    print("\nquestions by split and family (mean hops):")
    print(f"  {'split':<8} {'chain':>12} {'iterative':>12} {'comparison':>12}")
    for split in ("sft", "train", "val", "test"):
        rows = []
        for name in manifest["files"]:
            if name == split or name.startswith(f"{split}/"):
                rows += list(read_jsonl(world_dir / manifest["files"][name]))
        n = Counter(r["family"] for r in rows)
        hops = Counter()
        for r in rows:
            hops[r["family"]] += r["hops"]
        cells = [f"{n[f]:>5} ({hops[f] / max(1, n[f]):.1f})" for f in ("chain", "iterative", "comparison")]
        print(f"  {split:<8} " + " ".join(f"{c:>12}" for c in cells))

    example = next(r for r in read_jsonl(world_dir / manifest["files"]["sft"]) if r["hops"] >= 2)
    corpus = {r["id"]: r["contents"] for r in read_jsonl(world_dir / manifest["files"]["corpus"])}
    print(f"\nan expert trajectory ({example['family']}, {example['hops']} hops):")
    print(f"  Q: {example['question']}   gold: {example['golden_answers']}")
    for text, trainable in render_trajectory(steps_from_rows(example["steps"]), gold_documents(corpus)):
        for line in text.strip().splitlines():
            print(f"  {'model' if trainable else 'env  '} | {line}")
    print(f"\nnext: lit-search-rl fit --config configs/synthetic/sft.yaml   (manifest: {world_dir / 'world.json'})")
