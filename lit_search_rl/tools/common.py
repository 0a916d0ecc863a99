"""What every tool shares: a jsonargparse parser that shows docstrings, and one-line errors."""

from __future__ import annotations

import ast
import os
import re
import sys
from argparse import ArgumentError
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any, TypeVar

from jsonargparse import ArgumentParser, set_parsing_settings

# Field docstrings ("""...""" under a dataclass field) become the --help text of the option.
set_parsing_settings(docstring_parse_attribute_docstrings=True)


T = TypeVar("T")


def dataclass_from_args(cls: type[T], args: Any) -> T:
    """Build a config dataclass from the parsed options that carry its field names."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})  # type: ignore[arg-type]


class ToolError(Exception):
    """A user-facing error: printed as one line, exit status 2, no traceback."""


def make_parser(command: str, description: str) -> ArgumentParser:
    """A parser for ``lit-search-rl COMMAND`` that raises instead of exiting, so errors stay one line."""
    return ArgumentParser(prog=f"lit-search-rl {command}", description=description, exit_on_error=False)


def run_tool(
    command: str, body: Callable[[Sequence[str]], None], argv: Sequence[str], option_prefix: str = "--"
) -> int:
    """Run a tool's body and turn expected failures (bad options included) into a one-line message on stderr.

    ``option_prefix`` is put before the option names that jsonargparse reports (``--`` for the
    tools' own flags; nothing for ``model.group_size``, which is also the key in a config file).
    """
    try:
        body(argv)
    except (ToolError, ValueError, OSError, ArgumentError) as e:
        if os.environ.get("LIT_SEARCH_RL_TRACEBACK"):
            raise
        print(f"lit-search-rl {command}: error: {error_message(e, option_prefix)}", file=sys.stderr)
        return 2
    return 0


# jsonargparse wraps the one real error of a value in layers that each repeat the ones below:
# 'Parser key "data":', 'Does not validate against any of the Union subtypes' (with the list of
# types tried and a dump of every setting), 'Problem with given class_path ...:', and so on. Each
# layer keeps the one below as ``__cause__``; the innermost error that is not such a layer is
# the message, and the parser keys on the way name the option.
_PARSER_KEY = re.compile(r'Parser key "([^"]+)":\s*(.*)', re.DOTALL)
_CLASS_PATH = re.compile(r"Problem with given class_path '([^']+)':\s*(.*)", re.DOTALL)
_UNION = "Does not validate against any of the Union subtypes"
_LITERAL = re.compile(r"Expected a typing\.Literal\[(.*)\]\. Got value: (.*)", re.DOTALL)
_TYPE = re.compile(r"Expected a <class '(\w+)'>\. Got value: (.*)", re.DOTALL)
_NOT_ACCEPTED = re.compile(r"Option '([^']+)' is not accepted")
_KINDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def error_message(error: BaseException, option_prefix: str = "--") -> str:
    """One short line for ``error``: jsonargparse's layers taken off, the option named as the user sets it."""
    keys: list[str] = []
    class_path = None
    while True:
        text = str(error).strip()
        layer = False
        if match := _PARSER_KEY.match(text):
            if not keys or keys[-1] != match.group(1):  # each key is repeated by a TypeError layer
                keys.append(match.group(1))
            text, layer = match.group(2).strip(), True
        if match := _CLASS_PATH.match(text):
            class_path, text, layer = match.group(1), match.group(2).strip(), True
        elif text.startswith(_UNION):
            layer = True
        if not layer or error.__cause__ is None:
            break
        error = error.__cause__
    if text.startswith(_UNION):  # a layer without its cause: its first listed error is the real one
        first = re.search(r"Errors:\s*- (.*?)(?:\n\s*- |\n\s*Given value|$)", text, re.DOTALL)
        text = first.group(1) if first else text
        text = _CLASS_PATH.sub(r"\2", text).strip()
    option = option_prefix + ".".join(keys) if keys else ""
    return " ".join(_rephrase(text, option, class_path).split())  # one line, whatever the exception held


def _rephrase(text: str, option: str, class_path: str | None) -> str:
    """jsonargparse's leaf messages in plain words, after the option they are about."""
    if match := _LITERAL.fullmatch(text):
        try:
            choices = ", ".join(str(c) for c in ast.literal_eval(f"[{match.group(1)}]"))
        except (ValueError, SyntaxError):
            choices = match.group(1)
        return f"{option} must be one of {choices} (got {match.group(2).strip()!r})"
    if (match := _TYPE.fullmatch(text)) and match.group(1) in _KINDS:
        return f"{option} must be {_KINDS[match.group(1)]} (got {match.group(2).strip()!r})"
    if match := _NOT_ACCEPTED.fullmatch(text):
        where = f" of {class_path}" if class_path else ""
        return f"{option}{'.' if option else ''}{match.group(1)} is not an option{where}"
    return f"{option}: {text}" if option else text
