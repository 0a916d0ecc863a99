"""Argument checks shared by the config classes, with errors that name the option.

Nothing here imports torch or Lightning: ``lit-search-rl fit`` runs the settings checks on the
values of the config files and the command line before the heavy imports, so a typo fails in
well under a second; the modules run the same checks on their full settings when they are built.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
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


# -- settings of the shipped modules ------------------------------------------------------------
# Each check takes the init arguments as a mapping that may lack any of them (the fast check sees
# only what the config files and the command line set); a rule is applied when all of its values
# are present and of the expected kind, the rest is left to jsonargparse's type checks.

STRATEGY_NAMES = ("recycle", "grpo", "dapo", "bounded_dapo")
"""The query strategies of ``RecyclingDataModule`` (``data.strategies.STRATEGIES``)."""
WEIGHTING_NAMES = ("none", "greso")
"""Its pool weightings (``data.weighting.WEIGHTINGS``)."""
ALLOCATOR_NAMES = ("fixed", "knapsack")
"""Its rollout allocators (``data.allocation.ALLOCATORS``)."""


def _number(values: Mapping[str, Any], name: str, prefix: str, integer: bool = False) -> float | None:
    """The number set for ``name``, None when it is unset (or None); a value that is no number is an error."""
    value = values.get(name)
    if value is None:
        return None
    if isinstance(value, str):  # the command line and YAML 1.1 give "1e-3" as text; jsonargparse converts it
        try:
            value = int(value) if integer else float(value)
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise ValueError(f"{prefix}{name} must be {kind} (got {value!r})") from None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None  # a list or a mapping: jsonargparse names the type
    if integer and value != int(value):
        raise ValueError(f"{prefix}{name} must be an integer (got {value!r})")
    return value


def _at_least(values: Mapping[str, Any], names: Iterable[str], low: float, prefix: str) -> None:
    for name in names:
        value = _number(values, name, prefix, integer=True)
        if value is not None and value < low:
            raise ValueError(f"{prefix}{name} must be at least {low} (got {value})")


def check_one_of(values: Mapping[str, Any], name: str, choices: Iterable[str], prefix: str) -> None:
    """Raise ``ValueError`` naming ``prefix + name`` when its value is set and not one of ``choices``."""
    value, choices = values.get(name), tuple(choices)
    if value is not None and value not in choices:
        raise ValueError(f"{prefix}{name} must be one of {', '.join(choices)} (got {value!r})")


def check_grpo_settings(values: Mapping[str, Any], prefix: str = "model.") -> None:
    """The GRPO module's own settings: sizes, update passes, reward name, and its ``loss`` and ``optimizer``
    sections when they are given as mappings (the raw config; built ones check themselves)."""
    _at_least(values, ("group_size",), 2, prefix)
    _at_least(values, ("batch_size", "oversample", "micro_batch_size", "update_epochs"), 1, prefix)
    _at_least(values, ("lora_rank",), 0, prefix)
    group, batch, micro = (_number(values, n, prefix, integer=True)
                           for n in ("group_size", "batch_size", "micro_batch_size"))  # fmt: skip
    if group is not None and batch is not None and micro is not None and (group * batch) % micro:
        raise ValueError(f"{prefix}micro_batch_size ({micro}) must divide group_size * batch_size "
                         f"({group * batch})")  # fmt: skip
    _check_reward(values.get("reward"), prefix)
    for name, check in (("loss", check_loss_settings), ("optimizer", check_optimizer_settings)):
        section = values.get(name)
        if isinstance(section, Mapping):
            check(section, f"{prefix}{name}.")


def _finite(values: Mapping[str, Any], names: Iterable[str], prefix: str, negative: Iterable[str] = ()) -> None:
    for name in names:
        value = _number(values, name, prefix)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{prefix}{name} must be a finite number (got {value})")
        if value is not None and value < 0 and name not in negative:
            raise ValueError(f"{prefix}{name} must not be negative (got {value})")


def check_loss_settings(values: Mapping[str, Any], prefix: str = "model.loss.") -> None:
    """The loss settings' numbers: clipping and the KL weight (``grpo.config.LossConfig``)."""
    _finite(values, ("kl_coef", "clip_low", "clip_high", "clip_c", "zero_variance_alpha"), prefix,
            negative=("clip_c",))  # fmt: skip
    clip_low, clip_c = _number(values, "clip_low", prefix), _number(values, "clip_c", prefix)
    if clip_low is not None and clip_low >= 1:
        raise ValueError(f"{prefix}clip_low must be in [0, 1) (got {clip_low})")
    if clip_c is not None and clip_c <= 1:
        raise ValueError(f"{prefix}clip_c must be above 1 (got {clip_c})")
    alpha = _number(values, "zero_variance_alpha", prefix)
    if alpha is not None and alpha <= 0:
        raise ValueError(f"{prefix}zero_variance_alpha must be above 0 (got {alpha})")


def check_optimizer_settings(values: Mapping[str, Any], prefix: str = "model.optimizer.") -> None:
    """The optimizer settings' numbers (``grpo.config.OptimizerConfig``)."""
    _finite(values, ("learning_rate", "weight_decay", "gradient_clip", "adam_beta1", "adam_beta2", "adam_eps"), prefix)
    _at_least(values, ("warmup_steps", "decay_steps"), 0, prefix)
    ratio = _number(values, "min_lr_ratio", prefix)
    if ratio is not None and not 0 <= ratio <= 1:
        raise ValueError(f"{prefix}min_lr_ratio must be in [0, 1] (got {ratio})")
    for name in ("adam_beta1", "adam_beta2"):
        beta = _number(values, name, prefix)
        if beta is not None and beta >= 1:
            raise ValueError(f"{prefix}{name} must be in [0, 1) (got {beta})")
    eps = _number(values, "adam_eps", prefix)
    if eps is not None and eps <= 0:
        raise ValueError(f"{prefix}adam_eps must be above 0 (got {eps})")


def _check_reward(name: Any, prefix: str) -> None:
    """A registered reward name, or ``module:function`` (imported when the module is built)."""
    from lit_search_rl.rewards import get_reward  # light: pure Python

    if isinstance(name, str) and ":" not in name:  # a name alone is looked up, never imported
        try:
            get_reward(name)
        except ValueError as e:
            raise ValueError(f"{prefix}reward: {e}") from None


def check_recycling_settings(values: Mapping[str, Any], prefix: str = "data.") -> None:
    """The recycling data module's settings: strategy, recycled weight, rounds, sizes."""
    check_one_of(values, "strategy", STRATEGY_NAMES, prefix)
    check_one_of(values, "exhaustion", ("reset", "stop"), prefix)
    weight = _number(values, "recycled_weight", prefix)
    if weight is not None and not 0 <= weight <= 1:
        raise ValueError(f"{prefix}recycled_weight must be in [0, 1] (got {weight})")
    _at_least(values, ("max_rounds", "batch_size", "oversample", "eval_batch_size"), 1, prefix)
    _at_least(values, ("check_every",), 0, prefix)
    check_one_of(values, "weighting", WEIGHTING_NAMES, prefix)
    alpha, weighting = _number(values, "greso_alpha", prefix), values.get("weighting") or "none"
    if alpha is not None and weighting != "greso":
        raise ValueError(f"{prefix}greso_alpha is {alpha} but {prefix}weighting is {weighting!r}, not greso: "
                         f"leave it unset")  # fmt: skip
    if alpha is not None and not 0 < alpha <= 1:
        raise ValueError(f"{prefix}greso_alpha must be in (0, 1] (got {alpha})")
    check_one_of(values, "allocator", ALLOCATOR_NAMES, prefix)
    _at_least(values, ("rollout_budget",), 1, prefix)
    _at_least(values, ("group_size",), 2, prefix)
    budget, allocator = _number(values, "rollout_budget", prefix, integer=True), values.get("allocator") or "fixed"
    if budget is not None and allocator != "knapsack":
        raise ValueError(f"{prefix}rollout_budget is {budget} but {prefix}allocator is {allocator!r}, not knapsack: "
                         f"leave it unset")  # fmt: skip


SETTINGS_CHECKS: dict[str, Callable[[Mapping[str, Any], str], None]] = {
    "lit_search_rl.grpo.GRPOModule": check_grpo_settings,
    "lit_search_rl.data.recycling_datamodule.RecyclingDataModule": check_recycling_settings,
    "lit_search_rl.data.qa_datamodule.QADataModule": check_recycling_settings,
}
"""Checks by the class path a config names (jsonargparse also accepts the bare class name)."""


_LOSS_OPTIONS = ("advantage_scale", "loss_agg", "clip_low", "clip_high", "clip_c", "kl_coef", "kl_estimator")
_OPTIMIZER_OPTIONS = ("learning_rate", "warmup_steps", "weight_decay", "gradient_clip")
RENAMED: dict[str, dict[str, str]] = {
    "GRPOModule": {
        "rollout.top_k": "rollout.documents_per_query",
        **{name: f"loss.{name}" for name in _LOSS_OPTIONS},
        **{name: f"optimizer.{name}" for name in _OPTIMIZER_OPTIONS},
    },
    "SFTDataModule": {"top_k": "documents_per_query"},
}
"""Options that were renamed, by class and old name: an old config gets one line naming the new one."""


def check_renamed(section: str, class_path: Any, keys: Iterable[str]) -> None:
    """Refuse an option of ``section`` (``model`` or ``data``) by an old name, naming its new name.

    ``keys`` are dotted as ``--section.key`` writes them, without the section (``rollout.top_k``).
    """
    renamed = RENAMED.get(class_path.rsplit(".", 1)[-1], {}) if isinstance(class_path, str) else {}
    for key in keys:
        if key in renamed:
            raise ValueError(f"{section}.{key} was renamed {section}.{renamed[key]}")


def check_settings(section: str, class_path: Any, values: Mapping[str, Any]) -> None:
    """Check the init arguments of ``section`` (``model`` or ``data``) when its class is one of ours.

    ``values`` may hold only some of them. Option names in the errors are ``section.name``, as
    ``--section.name`` on the command line (``section.init_args.name`` in a config file).
    """
    if not isinstance(class_path, str):
        return
    check = SETTINGS_CHECKS.get(class_path) or {p.rsplit(".", 1)[1]: c for p, c in SETTINGS_CHECKS.items()}.get(
        class_path
    )
    if check is not None:
        check(values, f"{section}.")


def check_sources(section: str, values: Mapping[str, Any]) -> None:
    """Check that the model a ``model`` section names can be loaded (after the settings: this may ask the Hub)."""
    model = values.get("model") if section == "model" else None
    if isinstance(model, str):
        check_model_source(model, f"{section}.model")


# -- data files: present, and their rows readable --------------------------------------------------

PATH_ARGS = {"model": ("retriever",), "data": ("train", "world", "tokenizer")}
"""Init arguments that name a local file or folder; ``model.model`` (a folder or a Hub id) is ``check_sources``'."""

EVAL_SPLITS = {"fit": ("val_sets",), "validate": ("val_sets",), "test": ("test_sets",)}
"""The evaluation sets each subcommand reads."""


def _get(value: Any, key: str) -> Any:
    """``key`` of a mapping, a namespace or a dataclass; None when it has none."""
    return value.get(key) if hasattr(value, "get") else getattr(value, key, None)


def check_local(value: Any, flag: str) -> None:
    """A value that looks like a local path (its parent folder exists, or it starts with ./ / ~) must exist.

    ``Qwen/Qwen3-1.7B`` is a Hub id (no folder ``Qwen`` here) and URLs (``http://``, ``empty://``) are left alone.
    """
    if not isinstance(value, str) or "://" in value:
        return
    path = Path(value).expanduser()
    looks_local = value.startswith((".", "/", "~")) or (path.parent != Path(".") and path.parent.is_dir())
    if looks_local and not path.exists():
        raise FileNotFoundError(f"{flag}: {value} does not exist")


def check_paths(section: str, values: Any, subcommand: str | None = None) -> None:
    """Every local file or folder the ``section``'s init arguments name exists, with the evaluation sets that
    ``subcommand`` reads (all of them without one)."""
    for name in PATH_ARGS.get(section, ()):
        value = _get(values, name)
        if isinstance(value, list | tuple):  # several files (``data.train``)
            for i, item in enumerate(value):
                check_local(item, f"{section}.init_args.{name}[{i}]")
        else:
            check_local(value, f"{section}.init_args.{name}")
    for split in EVAL_SPLITS.get(subcommand or "", ("val_sets", "test_sets")):
        for i, eval_set in enumerate(_get(values, split) or []):
            path = _get(eval_set, "path")
            if isinstance(path, str) and not Path(path).exists():
                raise FileNotFoundError(f"{section}.init_args.{split}[{i}].path: {path} does not exist")


def check_train_rows(values: Any, subcommand: str | None) -> None:
    """Read the rows of the training questions ``fit`` uses (``data.train``), so a bad row stops it at once."""
    from lit_search_rl.data.qa import load_qa

    train = _get(values, "train")
    if subcommand != "fit":
        return
    for path in [train] if isinstance(train, str) else list(train or []):  # one file or several
        if isinstance(path, str) and Path(path).is_file():
            try:
                load_qa(Path(path))
            except ValueError as e:
                raise ValueError(f"data.train: {e}") from None


def check_eval_rows(values: Any, subcommand: str | None) -> None:
    """Read the rows of the evaluation files ``subcommand`` uses, so bad data stops it before anything is built.

    Hub datasets are left to set-up (they need the network); the loader keeps what it read for set-up.
    """
    from lit_search_rl.data.eval_sets import EvalSet, load_eval_set

    for split in EVAL_SPLITS.get(subcommand or "", ()):
        for i, given in enumerate(_get(values, split) or []):
            fields = given.as_dict() if hasattr(given, "as_dict") else given
            if isinstance(fields, EvalSet):
                eval_set = fields
            elif isinstance(fields, Mapping):
                try:
                    eval_set = EvalSet(**dict(fields))
                except TypeError:  # an unknown field: the config classes name it
                    continue
            else:
                continue
            if eval_set.path is None:
                continue
            try:
                load_eval_set(eval_set)
            except (ValueError, OSError) as e:
                kind = FileNotFoundError if isinstance(e, FileNotFoundError) else ValueError
                raise kind(f"data.{split}[{i}]: {e}") from None


# -- model names: a local folder or a Hub id ------------------------------------------------------


def looks_like_path(value: str) -> bool:
    """Whether ``value`` can only be meant as a local path, never as a Hub id (``name`` or ``owner/name``).

    Hub ids have at most one slash, no backslash, and do not start with ``.``, ``/`` or ``~``; an id
    whose owner part is an existing local folder (``runs/sft-model``) is a path too.
    """
    if value.startswith((".", "/", "~")) or "\\" in value or value.count("/") > 1:
        return True
    return "/" in value and Path(value.split("/", 1)[0]).is_dir()


def _hub_offline() -> bool:
    flags = (os.environ.get(n, "") for n in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f.strip().lower() in ("1", "on", "yes", "true") for f in flags)


_FOUND_ON_HUB: set[str] = set()  # asked once per process: the fast check and LightningCLI's check both run


def check_model_source(value: str, flag: str, timeout: float = 10.0) -> None:
    """Fail at once, in one line, when ``value`` is neither a local folder nor a reachable Hub model.

    A path-like value must be an existing folder. A Hub id must be in the local Hub cache, or the
    Hub must answer for it within ``timeout`` seconds: transformers would otherwise retry for over a
    minute when there is no network, and end with advice about offline mode.
    """
    if "://" in value:
        return
    path = Path(value).expanduser()
    if path.exists():
        return
    if looks_like_path(value):
        raise FileNotFoundError(f"{flag}: folder {value} does not exist")
    from huggingface_hub import try_to_load_from_cache  # light; no network

    try:
        if isinstance(try_to_load_from_cache(value, "config.json"), str):
            return
    except ValueError:  # not a valid repository id either (HFValidationError)
        raise FileNotFoundError(f"{flag}: folder {value} does not exist") from None
    if value in _FOUND_ON_HUB:
        return
    local = f"there is no folder {value}"
    if _hub_offline():
        raise FileNotFoundError(f"{flag}: {local}, and no copy of {value} in the Hub cache (HF_HUB_OFFLINE is "
                                "set)")  # fmt: skip
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        HfApi().model_info(value, timeout=timeout)
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{flag}: {local}, and no model {value} on the Hugging Face Hub") from None
    except Exception as e:  # no network, DNS, proxy, timeout: any failure to get an answer
        cause = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(f"{flag}: {local}, and the Hugging Face Hub cannot be reached to look {value} up "
                                f"({cause})") from None  # fmt: skip
    _FOUND_ON_HUB.add(value)
