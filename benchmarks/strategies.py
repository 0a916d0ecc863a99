"""Query strategies at an equal rollout budget: recycle, soft recycle, GRPO, DAPO, Bounded-DAPO, GRESO, Knapsack, ZVP.

Run after ``make demo`` (it trains from the demo's SFT checkpoint, world and index):

    .venv/bin/python benchmarks/strategies.py --seeds 0 1 2

Every run is ``lit-search-rl fit`` of ``configs/synthetic/grpo-recycle.yaml`` with only the
strategy changed, stopped by ``RolloutBudget`` after the same number of trajectories, validated
every few steps on the world's val questions (EM against rollouts consumed), and then tested on
the held-out test questions. Writes ``benchmarks/results/strategies.json``, one PNG per measure
under ``benchmarks/results/``, and prints the tables for RESULTS.md. ``--train_questions N`` trains on
a pool of N questions, small enough that the budget draws each several times (the paper's 84.5K
trajectories over 10K queries draw each about twice). Finished runs (their logs
under ``--out``) are read back instead of run again, so a sweep can be extended seed by seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_search_rl.lightning_cli import SearchRLCLI

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("chain", "iterative", "comparison")
# name: (data.strategy, model.oversample k, data.recycled_weight: recycle only, data.weighting, data.allocator,
#        model.loss.zero_variance_advantage)
STRATEGIES = {
    "recycle": ("recycle", 2, 1.0, "none", "fixed", False),
    "soft-recycle": ("recycle", 2, 0.1, "none", "fixed", False),
    "grpo": ("grpo", 1, None, "none", "fixed", False),
    "dapo": ("dapo", 1, None, "none", "fixed", False),
    "bounded-dapo": ("bounded_dapo", 2, None, "none", "fixed", False),
    "greso-recycle": ("recycle", 2, 1.0, "greso", "fixed", False),
    "greso-bounded-dapo": ("bounded_dapo", 2, None, "greso", "fixed", False),
    "knapsack-recycle": ("recycle", 2, 1.0, "none", "knapsack", False),
    "zvp-recycle": ("recycle", 2, 1.0, "none", "fixed", True),
}
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
"""Student's t at 97.5% for 1..10 degrees of freedom (more seeds use the last)."""
MEASURES = {  # tag: (name in tables, how a run's series becomes one number)
    "train/signal_fraction": ("signal fraction", "mean"),
    "train/effective_batch_size": ("effective-batch fill", "fill"),
    "train/recycled_fraction": ("recycled share (second half)", "batch_share"),
    "train/recovery_fraction": ("recovery flips per drawn query", "mean"),
    "train/drift_fraction": ("drift flips per drawn query", "mean"),
}


def _eval_sets(world: Path, split: str) -> str:
    return "[" + ", ".join(f'{{"path": "{world / split / f"{f}.jsonl"}"}}' for f in FAMILIES) + "]"


def run_one(run: Path, train: Path, out: Path, name: str, seed: int, budget: int, batch: int, val_every: int) -> dict:
    strategy, oversample, weight, weighting, allocator, zvp = STRATEGIES[name]
    logs = out / "logs"
    common = [f"--seed_everything={seed}", "--trainer.enable_progress_bar=false",
              f"--trainer.logger.init_args.save_dir={logs}", f"--model.init_args.retriever={run / 'index'}",
              f"--data.init_args.train={train}"]  # fmt: skip
    fit = SearchRLCLI(args=[
        "fit", "--config", str(ROOT / "configs/synthetic/grpo-recycle.yaml"), *common,
        f"--trainer.logger.init_args.name={name}-seed{seed}", "--trainer.limit_train_batches=100000",
        f"--trainer.val_check_interval={val_every}", "--trainer.callbacks+=lit_search_rl.callbacks.RolloutBudget",
        f"--trainer.callbacks.init_args.max_rollouts={budget}",
        f"--model.init_args.model={run / 'sft-model'}", f"--model.init_args.export_dir={out / 'model'}",
        f"--model.init_args.sampling.seed={seed}", "--model.init_args.optimizer.learning_rate=5e-5",
        f"--model.init_args.batch_size={batch}", f"--model.init_args.oversample={oversample}",
        f"--data.init_args.strategy={strategy}",
        f"--data.init_args.recycled_weight={'null' if weight is None else weight}",
        f"--data.init_args.weighting={weighting}", f"--data.init_args.allocator={allocator}",
        f"--model.init_args.loss.zero_variance_advantage={str(zvp).lower()}",
        f"--data.init_args.seed={seed}", f"--data.init_args.val_sets={_eval_sets(run / 'world', 'val')}",
        "--data.init_args.test_sets=[]",
    ])  # fmt: skip
    test = SearchRLCLI(args=[
        "test", "--config", str(ROOT / "configs/synthetic/grpo-recycle.yaml"), *common, "--verbose=false",
        f"--trainer.logger.init_args.name={name}-seed{seed}-test", f"--model.init_args.model={out / 'model'}",
        "--data.init_args.val_sets=[]", f"--data.init_args.test_sets={_eval_sets(run / 'world', 'test')}",
    ])  # fmt: skip
    del fit, test
    return load_run(out, name, seed)


def load_run(out: Path, name: str, seed: int) -> dict | None:
    """A finished run read back from its logs (training scalars and the test table); None if unfinished."""
    tables = sorted((out / "logs" / f"{name}-seed{seed}-test").glob("version_*/test-step*.csv"))
    fits = sorted((out / "logs" / f"{name}-seed{seed}").glob("version_*"))
    if not tables or not fits:
        return None
    test = {}
    for line in tables[-1].read_text().splitlines()[1:]:
        dataset, n, em, *_ = line.split(",")
        test[dataset] = {"n": int(n), "em": float(em)}
    events = EventAccumulator(str(fits[-1]))
    events.Reload()
    series = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    steps = len(series.get("train/loss", []))
    return {"strategy": name, "seed": seed, "test": test, "series": series, "optimizer_steps": steps}


def summarize(run: dict, batch: int) -> dict[str, float]:
    series = {tag: [v for _, v in points] for tag, points in run["series"].items()}
    row = {f"test {f}": run["test"][f]["em"] for f in (*FAMILIES, "avg")}
    for tag, (label, how) in MEASURES.items():
        values = series.get(tag, [0.0])
        if how == "fill":
            row[label] = statistics.mean(values) / batch
        elif how == "batch_share":  # of the effective batches' groups over the second half of the steps
            sizes = series["train/effective_batch_size"][len(values) // 2 :]
            shares = values[len(values) // 2 :]
            row[label] = sum(v * n for v, n in zip(shares, sizes, strict=True)) / max(1.0, sum(sizes))
        else:
            row[label] = statistics.mean(values)
    row["rollouts"] = series["train/rollouts_total"][-1]
    row["optimizer steps"] = run["optimizer_steps"]
    return row


def em_curve(run: dict, family: str = "avg") -> list[tuple[float, float]]:
    """(rollouts consumed, val EM of ``family``) at each validation."""
    rollouts = dict(run["series"]["train/rollouts_total"])
    curve = []
    for step, em in run["series"].get(f"val/{family}/em", []):
        before = [r for s, r in rollouts.items() if s <= step]
        curve.append((max(before) if before else 0.0, em))
    return curve


def plot(runs: list[dict], table: dict[str, dict[str, list[float]]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    names = list(table)
    for label in next(iter(table.values())):
        if label in ("rollouts", "optimizer steps"):
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        means = [statistics.mean(table[n][label]) for n in names]
        errors = [statistics.stdev(table[n][label]) if len(table[n][label]) > 1 else 0.0 for n in names]
        ax.bar(names, means, yerr=errors, capsize=4, color="#4c72b0")
        ax.set_title(f"{label} (mean and sd over seeds)")
        path = out / f"strategies_{label.split(' (')[0].replace(' ', '_').replace('/', '_')}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    for family in ("avg", *FAMILIES):  # validation EM against trajectories spent, one plot per family
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name in names:
            for i, run in enumerate(r for r in runs if r["strategy"] == name):
                curve = em_curve(run, family)
                xs, ys = zip(*curve, strict=True) if curve else ((), ())
                ax.plot(xs, ys, marker="o", color=f"C{names.index(name)}", alpha=0.7, label=name if i == 0 else None)
        ax.set_xlabel("trajectories rolled out")
        ax.set_ylabel(f"val EM ({'avg of families' if family == 'avg' else family})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / ("strategies_em_vs_rollouts.png" if family == "avg" else f"strategies_em_vs_rollouts_{family}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="A `make demo` run folder.")
    parser.add_argument("--out", type=Path, default=Path("runs/strategies"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--budget", type=int, default=960, help="Trajectories per run.")
    parser.add_argument("--batch", type=int, default=4, help="B, signal groups per update.")
    parser.add_argument("--val_every", type=int, default=6, help="Validate every this many rollout steps.")
    parser.add_argument("--train_questions", type=int, default=None,
                        help="Train on the first N training questions only, so the pool is drawn several times over "
                             "within the budget (default: all).")  # fmt: skip
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    for needed in ("sft-model", "index", "world"):
        if not (args.run / needed).exists():
            raise SystemExit(f"--run: {args.run / needed} is missing (run `make demo` first)")
    train = args.run / "world" / "train.jsonl"
    if args.train_questions is not None:
        lines = train.read_text().splitlines()[: args.train_questions]
        if len(lines) < args.train_questions:
            raise SystemExit(f"--train_questions: {train} has only {len(lines)} questions")
        train = args.out / f"train-{args.train_questions}.jsonl"
        train.parent.mkdir(parents=True, exist_ok=True)
        train.write_text("\n".join(lines) + "\n")
    runs = []
    for seed in args.seeds:
        for name in args.strategies:
            folder = args.out / f"{name}-seed{seed}"
            run = load_run(folder, name, seed)  # a finished run of an earlier sweep is reused
            if run is None:
                start = time.perf_counter()
                run = run_one(args.run, train, folder, name, seed, args.budget, args.batch, args.val_every)
                run["seconds"] = time.perf_counter() - start
            runs.append(run)
            print(f"{name} seed {seed}: test avg EM {run['test']['avg']['em']:.3f}", flush=True)
    table: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for label, value in summarize(run, args.batch).items():
            table.setdefault(run["strategy"], {}).setdefault(label, []).append(value)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "strategies.json").write_text(json.dumps({"runs": runs, "table": table}, indent=1) + "\n")
    plots = plot(runs, table, args.results)

    labels = list(next(iter(table.values())))
    print("\n| strategy | " + " | ".join(labels) + " |")
    print("| --- |" + " ---: |" * len(labels))
    for name, row in table.items():
        cells = []
        for label in labels:
            values = row[label]
            sd = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.3f}{sd}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\ntest avg EM, mean and 95% interval over the seeds (Student's t):")
    for name, row in table.items():
        values = row["test avg"]
        if len(values) > 1:
            half = T_975[min(len(values) - 1, len(T_975)) - 1] * statistics.stdev(values) / len(values) ** 0.5
            print(f"  {name}: {statistics.mean(values):.3f} [{statistics.mean(values) - half:.3f}, "
                  f"{statistics.mean(values) + half:.3f}]")  # fmt: skip
    print("\nplots: " + ", ".join(str(p) for p in plots))


if __name__ == "__main__":
    main()
