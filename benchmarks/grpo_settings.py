"""GRPO settings from the demo's warm start, run side by side: test EM gain of each variant.

Run after ``make demo`` (or ``lit-search-rl demo --out DIR``); each variant is the demo's GRPO stage
(``lit_search_rl.tools.demo.train_grpo``) with command-line overrides, then tested as the demo tests:

    .venv/bin/python benchmarks/grpo_settings.py --run runs/demo --parallel 1 \\
        --variant base= --variant lr2e-4=--model.init_args.optimizer.learning_rate=2e-4

A variant is ``NAME=OVERRIDE[,OVERRIDE...]`` (overrides of ``lit-search-rl fit``, applied after the demo's).
Variants run in ``--parallel`` processes of ``--threads`` threads each (several at once only where the
machine has the cores for them: the figures are test EM, not times). Each variant's result lands in
``RUN/settings/NAME.json`` (a finished variant is read back, not run again); the table is printed for
RESULTS.md and written to ``--results``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from lit_search_rl.threads import configure_threads

configure_threads()

from lit_search_rl.tools.demo import FAMILIES, DemoSettings, evaluate_policy, family_gains, train_grpo  # noqa: E402


def warm_start(run: Path, seed: int) -> dict:
    """The warm start's test results (``summary`` and per-question ``em``), tested once and kept in
    ``RUN/settings/sft.json``."""
    path = run / "settings" / "sft.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        sft = evaluate_policy(run, run / "sft-model", "sft", seed)
        path.write_text(json.dumps({"summary": sft.summary, "em": sft.em}) + "\n")
    return json.loads(path.read_text())


def run_variant(run: Path, name: str, overrides: list[str], seed: int, result: Path) -> None:
    """Train one variant from the warm start in ``run`` and test it; writes ``result``."""
    before = warm_start(run, seed)
    start = time.perf_counter()
    cli = train_grpo(run, seed, DemoSettings(), name=name, extra=overrides)
    seconds = time.perf_counter() - start
    after = evaluate_policy(run, run / f"{name}-model", name, seed)
    gains = family_gains(before["em"], after.em, seed)
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith(("train/", "pool/"))}
    result.write_text(json.dumps({
        "name": name, "overrides": overrides, "seconds": seconds, "optimizer_steps": cli.trainer.global_step,
        "after": after.summary, "gains": gains, "metrics": metrics,
    }, indent=2) + "\n")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="A finished demo run folder.")
    parser.add_argument("--seed", type=int, default=0, help="The seed the demo run used.")
    parser.add_argument("--variant", action="append", default=[], help="NAME=OVERRIDE[,OVERRIDE...]")
    parser.add_argument("--parallel", type=int, default=1, help="Variants run at once.")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each variant.")
    parser.add_argument("--results", type=Path, default=None, help="JSON of every variant (default RUN/settings.json).")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    variants: dict[str, list[str]] = {}
    for spec in args.variant:
        name, _, overrides = spec.partition("=")
        if not name or name == "sft" or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            parser.error(f"--variant {spec!r}: NAME must be letters, digits, '-', '_' or '.', and not 'sft'")
        variants[name] = [o for o in overrides.split(",") if o]
    folder = args.run / "settings"
    folder.mkdir(parents=True, exist_ok=True)
    if args.worker is not None:
        run_variant(args.run, args.worker, variants[args.worker], args.seed, folder / f"{args.worker}.json")
        return
    warm_start(args.run, args.seed)
    pending = [n for n in variants if not (folder / f"{n}.json").exists()]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    running: list[subprocess.Popen] = []
    while pending or running:
        while pending and len(running) < args.parallel:
            name = pending.pop(0)
            log = (folder / f"{name}.log").open("w")
            cmd = [sys.executable, __file__, "--run", str(args.run), "--seed", str(args.seed), "--worker", name,
                   *(f"--variant={s}" for s in args.variant)]  # fmt: skip
            running.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
        time.sleep(2)
        for proc in [p for p in running if p.poll() is not None]:
            running.remove(proc)
            if proc.returncode:
                print(f"a variant failed (exit {proc.returncode}); see {folder}/*.log", file=sys.stderr)
    sft = json.loads((folder / "sft.json").read_text())["summary"]
    rows = [json.loads((folder / f"{n}.json").read_text()) for n in variants if (folder / f"{n}.json").exists()]
    (args.results or args.run / "settings.json").write_text(json.dumps({"sft": sft, "variants": rows}, indent=2) + "\n")
    print(
        "| variant | optimizer steps | "
        + " | ".join(f"{f} gain" for f in FAMILIES)
        + " | avg EM | avg gain [95%] | s |"
    )
    print("|---" * (len(FAMILIES) + 5) + "|")
    print("| SFT | 0 | " + " | ".join("" for _ in FAMILIES) + f" | {sft['avg']['em']:.3f} | | |")
    for r in rows:
        g = r["gains"]
        cells = " | ".join(f"{g[f]['gain']:+.3f}" for f in FAMILIES)
        interval = f"{g['avg']['gain']:+.3f} [{g['avg']['low']:+.3f}, {g['avg']['high']:+.3f}]"
        print(
            f"| {r['name']} | {r['optimizer_steps']} | {cells} | {r['after']['avg']['em']:.3f} | {interval} | "
            f"{r['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
