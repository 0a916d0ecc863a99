"""What every tool shares: a jsonargparse parser that shows docstrings, and one-line errors."""

from __future__ import annotations

import os
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


def run_tool(command: str, body: Callable[[Sequence[str]], None], argv: Sequence[str]) -> int:
    """Run a tool's body and turn expected failures (bad options included) into a one-line message on stderr."""
    try:
        body(argv)
    except (ToolError, ValueError, OSError, ArgumentError) as e:
        if os.environ.get("LIT_SEARCH_RL_TRACEBACK"):
            raise
        message = " ".join(str(e).split())  # one line, whatever the exception held
        print(f"lit-search-rl {command}: error: {message}", file=sys.stderr)
        return 2
    return 0
