"""The torch engine of this tree against the one of an earlier commit, alternated in one process.

Run after ``make demo``: ``.venv/bin/python benchmarks/engine_ab.py --against HEAD~1 --rollouts 6``. The engine
module of ``--against`` is read with ``git show`` and loaded beside this tree's; each repetition rolls out the
same B trajectories (B / 4 questions, K = 4, the demo's rollout settings from ``grpo-recycle.yaml``) with
``HFEngine``, the earlier ``TorchEngine`` and this tree's, on new questions and seeds each time, so that a
slow spell of a shared machine hits all three alike. Prints tokens/s per engine and the per-repetition ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import yaml

from lit_search_rl.threads import configure_threads

configure_threads()

from lit_search_rl.io import read_jsonl  # noqa: E402
from lit_search_rl.policy import load_policy, load_tokenizer  # noqa: E402
from lit_search_rl.retrieval.index import load_retriever  # noqa: E402
from lit_search_rl.rollout import torch_engine  # noqa: E402
from lit_search_rl.rollout.agent import AgentLoop, RolloutConfig  # noqa: E402
from lit_search_rl.rollout.engine import SamplingConfig  # noqa: E402
from lit_search_rl.rollout.hf_engine import HFEngine  # noqa: E402
from lit_search_rl.rollout.process_engine import PooledAgentLoop, ProcessPool  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("slot_cache", "decoder", "torch_engine")  # the engine's modules under lit_search_rl/rollout, itself last


def load_source(name: str, source: str, folder: Path) -> ModuleType:
    """Python ``source`` imported as module ``name`` (written to ``folder`` first), beside this tree's modules."""
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def engine_at(revision: str) -> type:
    """``TorchEngine`` as its modules stood at ``revision`` (each loaded under a name of its own).

    The modules the engine imports from this package are read at the same revision (where they existed
    then), so that the earlier engine runs with its own cache and forward passes, not this tree's.
    """
    folder = Path(tempfile.mkdtemp())
    engine = None
    for name in MODULES:
        shown = subprocess.run(["git", "show", f"{revision}:lit_search_rl/rollout/{name}.py"], cwd=ROOT,
                               capture_output=True, text=True)  # fmt: skip
        if shown.returncode != 0:
            continue  # the module did not exist yet
        source = shown.stdout
        for other in MODULES:
            source = source.replace(f"from lit_search_rl.rollout.{other} import", f"from earlier_{other} import")
        engine = load_source(f"earlier_{name}", source, folder)
    return engine.TorchEngine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="A demo run folder.")
    parser.add_argument("--against", default="HEAD", help="The git revision of the earlier engine.")
    parser.add_argument("--rollouts", type=int, default=6, help="Repetitions (each engine once per repetition).")
    parser.add_argument("--batch", type=int, default=32, help="Trajectories per rollout.")
    parser.add_argument("--workers", type=int, default=1, help="Also this tree's agent loop in N worker processes.")
    args = parser.parse_args()
    settings = yaml.safe_load((ROOT / "configs" / "synthetic" / "grpo-recycle.yaml").read_text())
    config = RolloutConfig(**settings["model"]["init_args"]["rollout"])
    tokenizer, model = load_tokenizer(args.run / "sft-model"), load_policy(args.run / "sft-model")
    rows, retriever = list(read_jsonl(args.run / "world" / "train.jsonl")), load_retriever(args.run / "index")

    def loop_of(engine_class: type) -> Callable[[SamplingConfig], AgentLoop]:
        return lambda sampling: AgentLoop(engine_class(model, tokenizer, sampling), retriever, tokenizer, config)

    loops = {"hf": loop_of(HFEngine), args.against: loop_of(engine_at(args.against)),
             "this tree": loop_of(torch_engine.TorchEngine)}  # fmt: skip
    if args.workers > 1:
        pool = ProcessPool(model, tokenizer, workers=args.workers, retriever=retriever)
        loops[f"{args.workers} workers"] = lambda sampling: PooledAgentLoop(pool, sampling, config)
    rates: dict[str, list[float]] = {name: [] for name in loops}
    groups = args.batch // 4
    for rep in range(args.rollouts):
        questions = [rows[(rep * groups + i) % len(rows)]["question"] for i in range(groups) for _ in range(4)]
        for name, loop_for in loops.items():
            agent = loop_for(SamplingConfig(temperature=1.0, seed=rep))
            agent.rollout(questions[:8])  # warm-up: two questions, one for each of two workers
            start = time.perf_counter()
            agent.rollout(questions)
            rates[name].append(agent.stats.generated_tokens / (time.perf_counter() - start))
    for name, values in rates.items():
        print(f"{name}: median {statistics.median(values):.0f} tokens/s ({', '.join(f'{v:.0f}' for v in values)})")
    ratios = [new / old for new, old in zip(rates["this tree"], rates[args.against], strict=True)]
    each = ", ".join(f"{r:.2f}" for r in ratios)
    print(f"this tree / {args.against}: median {statistics.median(ratios):.2f} ({each})")
    for name in loops:
        if name != "hf":
            ratios = [ours / hf for ours, hf in zip(rates[name], rates["hf"], strict=True)]
            each = ", ".join(f"{r:.2f}" for r in ratios)
            print(f"{name} / hf: median {statistics.median(ratios):.2f} ({each})")


if __name__ == "__main__":
    main()
