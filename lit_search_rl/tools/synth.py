"""``lit-search-rl synth``: generate the synthetic world, and ``lit-search-rl tiny-model``: build the tiny model."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from lit_search_rl.tools.common import dataclass_from_args, make_parser


def synth(argv: Sequence[str]) -> None:
    """Generate a synthetic world folder and print a summary."""
    from lit_search_rl.data.synthetic.expert import replay
    from lit_search_rl.data.synthetic.world import WorldConfig, generate_world, write_world

    parser = make_parser("synth", "Generate the synthetic world: entities, passages, questions, expert trajectories.")
    parser.add_argument("--out", type=Path, required=True, help="Folder to write the world to.")
    parser.add_argument("--overwrite", action="store_true", help="Replace --out if it exists and is not empty.")
    parser.add_class_arguments(WorldConfig, None, as_group=False)
    args = parser.parse_args(list(argv))
    config = dataclass_from_args(WorldConfig, args)

    start = time.perf_counter()
    world = generate_world(config)
    # Every expert plan is replayed against the corpus before anything is written, so a
    # world on disk always has reachable answers.
    contents = {p.id: p.contents for p in world.corpus.passages}
    for split, questions in world.splits.items():
        for q in questions:
            if replay(q.question, q.rule, q.steps, contents) not in q.golden_answers:
                raise RuntimeError(f"internal error: the expert plan of a {split} question does not reach its answer")
    manifest = write_world(world, args.out, overwrite=args.overwrite)
    counts = manifest["counts"]
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f}s (seed {config.seed})")
    print(f"  entities {counts['entities']}, passages {counts['passages']}")
    for split, n in counts.items():
        if split not in ("entities", "passages"):
            print(f"  {split:<18} {n:>6} questions")


def tiny_model(argv: Sequence[str]) -> None:
    """Train the tokenizer on a world and save a randomly initialised tiny decoder."""
    from lit_search_rl.models.tiny import TinyModelConfig, create_tiny_model

    parser = make_parser(
        "tiny-model",
        "Train a BPE tokenizer on a synthetic world and save a tiny random decoder (Qwen3 or Llama layout).",
    )
    parser.add_argument("--world", type=Path, required=True, help="World folder written by `lit-search-rl synth`.")
    parser.add_argument("--out", type=Path, required=True, help="Folder to save the tokenizer and model to.")
    parser.add_argument("--overwrite", action="store_true", help="Replace --out if it exists and is not empty.")
    parser.add_class_arguments(TinyModelConfig, None, as_group=False)
    args = parser.parse_args(list(argv))
    config = dataclass_from_args(TinyModelConfig, args)
    start = time.perf_counter()
    summary = create_tiny_model(args.world, args.out, config, overwrite=args.overwrite)
    print(
        f"wrote {args.out} in {time.perf_counter() - start:.1f}s: {config.architecture}, "
        f"{summary['parameters'] / 1e6:.2f}M parameters, vocabulary {summary['vocab_size']}"
    )
