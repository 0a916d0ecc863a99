"""``lit-search-rl demo``: the main job on the embedded default, run by ``make demo``.

The whole pipeline, each stage the same command a user would run by hand:

1. ``synth``: a synthetic world of fictional entities, passages and questions;
2. ``tiny-model``: a tokenizer trained on the world and a tiny random decoder (the Llama layout);
3. ``index``: a BM25 index of the world's passages;
4. ``fit --config configs/synthetic/sft.yaml``: supervised warm start, copy drills then expert trajectories;
5. ``test`` of the SFT policy on the held-out questions;
6. ``fit --config configs/synthetic/grpo-recycle.yaml``: GRPO with query recycling, validated on a
   fixed validation set every few steps (the curve lands in the log folder and TensorBoard);
7. ``test`` of the GRPO policy;

and a summary: test EM per question family before and after GRPO, each gain with a 95% interval
(paired bootstrap over the questions), a control that tests both policies with a retriever that
returns no passages (an agent that answers by searching must fail there), and the recycling
statistics at the end of training. Everything lands in one run folder (``runs/demo``), the figures
in ``summary.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lit_search_rl.tools.common import ToolError, make_parser

if TYPE_CHECKING:
    from lightning.pytorch.cli import LightningCLI

    from lit_search_rl.data.synthetic.world import WorldConfig

FAMILIES = ("chain", "iterative", "comparison")
_SCALED_COUNTS = ("num_countries", "num_cities", "num_people", "num_companies", "num_films", "num_bands",
                  "num_distractors")  # fmt: skip


@dataclass
class DemoSettings:
    """Sizes of the main job, chosen so that it runs in minutes on two CPU cores."""

    copy_drills: int = 800
    """Optimizer steps on copy drills at the start of the SFT warm start (``data.copy_drills``)."""
    sft_steps: int = 1100
    """Optimizer steps of the SFT warm start on expert trajectories, after the copy drills."""
    sft_learning_rate: float = 3e-3
    """Peak learning rate of the SFT warm start."""
    grpo_steps: int = 100
    """Training batches (rollout steps) of GRPO with recycling (``grpo-recycle.yaml``: 16 questions of 8 rollouts
    per update, from 32 candidates). GRPO's gain grows with steps as long as the pool holds questions that teach
    (benchmarks/RESULTS.md, 2026-12-05); 100 is what fits the demo's 15 minutes on two cores."""
    grpo_learning_rate: float = 1e-4
    """Learning rate of GRPO."""
    max_hops: int = 3
    """Longest relation chain of a question."""
    num_sft: int = 2700
    """Questions with expert trajectories for the warm start (the world's SFT split): three times as many as
    the RL pool, so that the warm start learns to read and copy instead of memorising a few hundred."""
    num_train: int = 900
    """Questions of the world's train split, which GRPO's pool holds beside the SFT split's questions (GRPO reads
    only their answers). Recycling consumes each question that gave a signal group, so a long GRPO stage needs a
    large pool: with the train split alone (900), signal groups per update fall from 14 to under 2 after about 75
    steps (a world of ``world_scale`` 2 leaves room for about 1,200 on every seed, of 3 for 2,700); a pool of
    1,200 fresh questions alone runs dry within the demo's 100 steps too (benchmarks/RESULTS.md, 2026-12-05)."""
    world_scale: int = 2
    """Multiplier of the world's entity counts (people, companies, films, bands, cities, countries,
    distractors): a larger world holds more distinct questions, so more expert trajectories fit in it."""
    num_test: int = 100
    """Test questions per family (100 keeps a gain of 0.10 well outside the noise of the test set)."""
    num_val: int = 20
    """Validation questions per family, evaluated every ``val_every`` GRPO steps for the learning curve."""
    val_every: int = 25
    """GRPO rollout steps between validations."""
    hidden_size: int = 128
    """Width of the tiny model (narrower than the library default, for speed on two cores)."""
    num_layers: int = 2
    """Decoder layers of the tiny model: at equal wall time two layers learn to copy faster than four."""
    num_heads: int = 2
    """Attention heads (and key/value heads) of the tiny model, each of 64 dimensions."""
    architecture: str = "llama"
    """Decoder layout of the tiny model: without Qwen3's QK-norm the copy drills are learnt far sooner."""
    vocab_size: int = 8192
    """Target vocabulary of the tiny tokenizer; large enough that every entity name word is one token, so
    copying a name from the question or a passage is a two-token copy."""


def _configs() -> Path:
    folder = Path(__file__).resolve().parents[2] / "configs" / "synthetic"
    if not folder.is_dir():
        raise ToolError(f"the demo needs the repository's configs folder ({folder}); run it from a clone")
    return folder


def _lightning(args: list[str]) -> LightningCLI:
    from lit_search_rl.lightning_cli import SearchRLCLI

    return SearchRLCLI(args=args)


def _eval_sets(world: Path, split: str) -> list[str]:
    return [f'{{"path": "{world / split / f"{family}.jsonl"}"}}' for family in FAMILIES]


@dataclass
class Evaluation:
    """One ``test`` run: the per-family summary and each question's exact match."""

    summary: dict[str, dict[str, float]]
    em: dict[str, dict[str, float]]
    """Per family (and ``avg`` over all), exact match keyed by question id."""
    predictions: Path | None
    """The predictions file of the run: what the agent answered on each question, and its trajectory."""


def evaluate_policy(out: Path, policy: Path, name: str, seed: int, retriever: str | None = None) -> Evaluation:
    """``lit-search-rl test`` of ``policy`` on the test questions (searching ``retriever``, the demo's index
    by default)."""
    cli = _lightning([
        "test", "--config", str(_configs() / "grpo-recycle.yaml"), f"--seed_everything={seed}", "--verbose=false",
        "--trainer.enable_progress_bar=false", f"--trainer.logger.init_args.save_dir={out / 'logs'}",
        f"--trainer.logger.init_args.name=test-{name}",
        f"--model.init_args.model={policy}", f"--model.init_args.retriever={retriever or out / 'index'}",
        "--model.init_args.evaluation={\"trajectories\": true}",
        f"--data.init_args.train={out / 'world' / 'train.jsonl'}", "--data.init_args.val_sets=[]",
        "--data.init_args.test_sets=[" + ", ".join(_eval_sets(out / "world", "test")) + "]",
    ])  # fmt: skip
    em: dict[str, dict[str, float]] = {"avg": {}}
    for result in cli.model.last_results:
        em.setdefault(result.dataset, {})[result.id] = result.em
        em["avg"][f"{result.dataset}/{result.id}"] = result.em
    return Evaluation(cli.model.last_evaluation, em, cli.model.last_predictions)


def family_gains(before: dict[str, list[float]], after: dict[str, list[float]], seed: int) -> dict[str, dict]:
    """Test EM gain from ``before`` to ``after`` (per-question EM by family, ``avg`` among them) for each family
    and the average, with its paired-bootstrap 95% interval."""
    from lit_search_rl.evaluation.bootstrap import paired_bootstrap

    return {f: paired_bootstrap(before[f], after[f], seed=seed).as_dict() for f in (*FAMILIES, "avg")}


def train_grpo(out: Path, seed: int, settings: DemoSettings, name: str = "grpo-recycle",
               extra: Sequence[str] = ()) -> LightningCLI:  # fmt: skip
    """The demo's GRPO stage from the warm start in ``out``: ``fit`` of ``grpo-recycle.yaml``, logged as ``name``
    and exported to ``out / f"{name}-model"``; ``extra`` command-line overrides come last, so they win.
    Returns the finished ``LightningCLI``."""
    return _lightning([
        "fit", "--config", str(_configs() / "grpo-recycle.yaml"), f"--seed_everything={seed}",
        f"--trainer.limit_train_batches={settings.grpo_steps}", f"--trainer.val_check_interval={settings.val_every}",
        "--trainer.num_sanity_val_steps=-1",
        f"--trainer.logger.init_args.save_dir={out / 'logs'}", f"--trainer.logger.init_args.name={name}",
        f"--model.init_args.model={out / 'sft-model'}", f"--model.init_args.retriever={out / 'index'}",
        f"--model.init_args.export_dir={out / f'{name}-model'}", f"--model.init_args.sampling.seed={seed}",
        f"--model.init_args.optimizer.learning_rate={settings.grpo_learning_rate}",
        f"--data.init_args.train=[{out / 'world' / 'train.jsonl'}, {out / 'world' / 'sft.jsonl'}]",
        f"--data.init_args.seed={seed}",
        "--data.init_args.val_sets=[" + ", ".join(_eval_sets(out / "world", "val")) + "]",
        "--data.init_args.test_sets=[]", *extra,
    ])  # fmt: skip


def _world_config(seed: int, settings: DemoSettings) -> WorldConfig:
    from lit_search_rl.data.synthetic.world import WorldConfig

    scaled = {name: getattr(WorldConfig, name) * settings.world_scale for name in _SCALED_COUNTS}
    return WorldConfig(seed=seed, max_hops=settings.max_hops, num_sft=settings.num_sft, num_train=settings.num_train,
                       num_val=settings.num_val, num_test=settings.num_test, **scaled)  # fmt: skip


def run_demo(out: Path, seed: int, settings: DemoSettings) -> dict:
    """Run the main job into ``out``; returns the figures the summary prints."""
    from lit_search_rl.data.synthetic.world import generate_world, write_world
    from lit_search_rl.models.tiny import TinyModelConfig, create_tiny_model
    from lit_search_rl.retrieval.index import build_index

    times: dict[str, float] = {}
    start = time.perf_counter()
    world = _world_config(seed, settings)
    write_world(generate_world(world), out / "world", overwrite=True)
    model = TinyModelConfig(seed=seed, hidden_size=settings.hidden_size, intermediate_size=3 * settings.hidden_size,
                            vocab_size=settings.vocab_size, num_layers=settings.num_layers,
                            num_heads=settings.num_heads, num_kv_heads=settings.num_heads,
                            architecture=settings.architecture)  # fmt: skip
    create_tiny_model(out / "world", out / "tiny-model", model, overwrite=True)
    build_index(out / "world" / "corpus.jsonl", out / "index", "bm25", progress=False, overwrite=True)
    times["world, model, index"] = time.perf_counter() - start

    start = time.perf_counter()
    sft_steps = settings.copy_drills + settings.sft_steps
    # one validation, after the last step: copy accuracy on the held-out expert trajectories
    sft = _lightning([
        "fit", "--config", str(_configs() / "sft.yaml"), f"--seed_everything={seed}",
        f"--trainer.max_steps={sft_steps}", f"--trainer.val_check_interval={sft_steps}",
        "--trainer.check_val_every_n_epoch=null", "--trainer.num_sanity_val_steps=0",
        f"--data.init_args.copy_drills={settings.copy_drills}",
        f"--model.init_args.learning_rate={settings.sft_learning_rate}",
        f"--trainer.logger.init_args.save_dir={out / 'logs'}",
        f"--model.init_args.model={out / 'tiny-model'}", f"--model.init_args.export_dir={out / 'sft-model'}",
        f"--data.init_args.world={out / 'world'}",
    ])  # fmt: skip
    times["SFT"] = time.perf_counter() - start
    copy_accuracy = float(sft.trainer.callback_metrics["val/copy_accuracy"])

    start = time.perf_counter()
    before = evaluate_policy(out, out / "sft-model", "sft", seed)
    times["test SFT"] = time.perf_counter() - start

    start = time.perf_counter()
    grpo = train_grpo(out, seed, settings)
    times["GRPO"] = time.perf_counter() - start
    metrics = {k: float(v) for k, v in grpo.trainer.callback_metrics.items() if k.startswith(("train/", "pool/"))}

    start = time.perf_counter()
    after = evaluate_policy(out, out / "grpo-recycle-model", "grpo", seed)
    times["test GRPO"] = time.perf_counter() - start

    start = time.perf_counter()
    # The control: the same policies with a search engine that finds nothing. An agent that answers by
    # searching fails here; one that recalls facts learnt in training does not.
    control = {name: evaluate_policy(out, out / folder, f"{name}-no-search", seed, "empty://").summary
               for name, folder in (("sft", "sft-model"), ("grpo", "grpo-recycle-model"))}  # fmt: skip
    times["no-search control"] = time.perf_counter() - start
    gains = family_gains(before.em, after.em, seed)
    log_dir = Path(grpo.trainer.log_dir)
    return {
        "seed": seed, "copy_accuracy": copy_accuracy, "before": before.summary, "after": after.summary,
        "gains": gains, "no_search": control,
        "validation_curve": str(log_dir / "validation.png"), "times": times,
        "predictions": {"sft": str(before.predictions), "grpo": str(after.predictions)},
        "recycling": {k: metrics.get(k) for k in ("train/recycled_fraction", "train/signal_fraction", "pool/consumed")},
        "log_dir": str(log_dir), "global_step": grpo.trainer.global_step,
    }  # fmt: skip


def print_summary(result: dict, out: Path) -> None:
    """The before/after table with intervals and the no-search control, the recycling figures, the times, and
    where the logs are."""
    before, after, gains, control = result["before"], result["after"], result["gains"], result["no_search"]
    print(
        f"\nlit-search-rl demo (seed {result['seed']}): test exact match, SFT warm start vs after GRPO with recycling\n"
    )
    print(f"  {'':<12} {'':>4} {'':>7} {'':>7} {'':>7} {'95% interval':>17}   {'no search':^15}")
    print(f"  {'family':<12} {'n':>4} {'SFT':>7} {'GRPO':>7} {'gain':>7} {'(paired bootstrap)':>17}   "
          f"{'SFT':>7} {'GRPO':>7}")  # fmt: skip
    for family in (*FAMILIES, "avg"):
        b, a, g = before[family]["em"], after[family]["em"], gains[family]
        print(f"  {family:<12} {int(after[family]['n']):>4} {b:>7.3f} {a:>7.3f} {g['gain']:>+7.3f} "
              f"  [{g['low']:+.3f}, {g['high']:+.3f}]   {control['sft'][family]['em']:>7.3f} "
              f"{control['grpo'][family]['em']:>7.3f}")  # fmt: skip
    print(f"\n  SFT copy accuracy on held-out expert trajectories: {result['copy_accuracy']:.3f}")
    rec = result["recycling"]
    print(f"\n  GRPO optimizer steps: {result['global_step']}; at the end: recycled share of the effective batch "
          f"{rec['train/recycled_fraction'] or 0:.2f}, signal fraction {rec['train/signal_fraction'] or 0:.2f}, "
          f"queries consumed {int(rec['pool/consumed'] or 0)}")  # fmt: skip
    print("\n  time: " + ", ".join(f"{k} {v:.0f}s" for k, v in result["times"].items()))
    print(f"\n  TensorBoard: tensorboard --logdir {out / 'logs'}")
    print(f"  validation EM during GRPO: {result['validation_curve']}")
    print(f"  recycling plot: {Path(result['log_dir']) / 'recycling.png'}")
    print(f"  results tables: {out / 'logs'}/test-*/version_*/test-step0.md")
    print(f"  what the agent answered, question by question (with its searches and trajectory):\n"
          f"    SFT  {result['predictions']['sft']}\n    GRPO {result['predictions']['grpo']}")  # fmt: skip


def demo(argv: Sequence[str]) -> None:
    """Run the main job into ``--out`` and print a summary."""
    parser = make_parser("demo", "Run the main job on the embedded default (synthetic world, tiny model).")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="Run folder; replaced on every run.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the world, the model and training.")
    parser.add_argument("--copy_drills", type=int, default=DemoSettings.copy_drills,
                        help="SFT optimizer steps on copy drills, before the trajectories.")  # fmt: skip
    parser.add_argument("--sft_steps", type=int, default=DemoSettings.sft_steps,
                        help="SFT optimizer steps on expert trajectories.")  # fmt: skip
    parser.add_argument("--grpo_steps", type=int, default=DemoSettings.grpo_steps, help="GRPO rollout steps.")
    parser.add_argument("--num_test", type=int, default=DemoSettings.num_test, help="Test questions per family.")
    parser.add_argument("--num_val", type=int, default=DemoSettings.num_val, help="Validation questions per family.")
    parser.add_argument("--val_every", type=int, default=DemoSettings.val_every,
                        help="GRPO steps between validations.")  # fmt: skip
    args = parser.parse_args(list(argv))
    for name in ("sft_steps", "grpo_steps", "num_test", "num_val", "val_every"):
        if getattr(args, name) < 1:
            raise ToolError(f"--{name} must be at least 1 (got {getattr(args, name)})")
    if args.copy_drills < 0:
        raise ToolError(f"--copy_drills must not be negative (got {args.copy_drills})")
    settings = DemoSettings(copy_drills=args.copy_drills, sft_steps=args.sft_steps, grpo_steps=args.grpo_steps,
                            num_test=args.num_test, num_val=args.num_val, val_every=args.val_every)  # fmt: skip
    started = time.perf_counter()
    result = run_demo(args.out, args.seed, settings)
    result["times"]["total"] = time.perf_counter() - started
    (args.out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print_summary(result, args.out)
