"""Argument checks shared by the config classes, with errors that name the option."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def require_at_least(config: Any, names: Iterable[str], low: int = 1, prefix: str = "--") -> None:
    """Raise ``ValueError`` naming the first field of ``config`` in ``names`` that is below ``low``.

    ``prefix`` is how the option is spelled where the user sets it (``--`` on the command line,
    ``rollout.`` in a config file).
    """
    for name in names:
        value = getattr(config, name)
        if value < low:
            raise ValueError(f"{prefix}{name} must be at least {low} (got {value})")
