"""Evaluation datasets: QA files as their authors publish them, Search-R1 parquet files and the FlashRAG hub.

Every source becomes one or more named lists of ``QARecord``; the names are the ``<dataset>`` of
the ``val/<dataset>/em`` tags and the rows of the results tables.

Rows: JSON lines or one JSON array, with the question in ``question``, the golden answers in the first
of ``golden_answers``, ``answers``, ``answer``, ``target`` (a string or a list of strings) and the id in
``id`` or ``_id``; ``EvalSet``'s ``question_field``, ``answers_field`` and ``id_field`` name other fields.
A row without an id is ``<file stem>-<row number>``.

Naming:

- A FlashRAG file or hub dataset is one dataset, called ``name`` (by default the hub name, or the
  file's stem; for FlashRAG's ``<dataset>/<split>.jsonl`` layout the folder's name).
- A parquet file with a ``data_source`` column (Search-R1's layout) is one dataset per source,
  in the order they first appear: ``nq``, ``hotpotqa``, ... With a ``name`` they become
  ``<name>/nq``, ``<name>/hotpotqa``, ... (to keep two such files apart).
- ``group_by`` splits each of those datasets by the value of a field: ``<dataset>/<value>``, in
  sorted value order, for example ``val/chain``, ``val/comparison``, ``val/iterative``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

from lit_search_rl.data.qa import ANSWER_FIELDS, ID_FIELDS, QARecord, answer_list, field_value, qa_record
from lit_search_rl.io import is_json_array, read_jsonl

HUB_REPO = "RUC-NLPIR/FlashRAG_datasets"
"""The Hugging Face dataset repository whose configurations ``EvalSet.hub`` names."""

# Columns of a Search-R1 parquet file read into a record; others (the bulky ``metadata``) only when grouped by.
_PARQUET_COLUMNS = (
    *ID_FIELDS,
    "question",
    *ANSWER_FIELDS,
    "data_source",
    "prompt",
    "reward_model",
    "extra_info",
    "ability",
)
_SPLIT_NAMES = {"train", "dev", "val", "valid", "validation", "test"}
_RESERVED = {"avg"}  # the name of the mean row of the results tables


@dataclass
class EvalSet:
    """One evaluation source: a local file or a dataset of the FlashRAG hub collection (exactly one of them)."""

    name: str = ""
    """Dataset name in metric tags and tables. Unset: the hub name, or the file's stem (its folder's name for
    ``<dataset>/test.jsonl``). For a parquet file with ``data_source``, a prefix: ``<name>/<source>``; unset, the
    sources alone."""
    path: str | None = None
    """A FlashRAG ``.jsonl`` / ``.json`` file or a ``.parquet`` file (Search-R1's layout or FlashRAG columns)."""
    hub: str | None = None
    """A dataset of the FlashRAG collection on the Hugging Face Hub (``nq``, ``triviaqa``, ``popqa``, ``hotpotqa``,
    ``2wikimultihopqa``, ``musique``, ``bamboogle``, ...); needs a network or the Hub cache."""
    split: str = "test"
    """Split of the hub dataset; unused for files."""
    limit: int | None = None
    """Keep the first N questions (of each ``data_source`` in a Search-R1 parquet file), before grouping."""
    group_by: str | None = None
    """Report the questions per value of this field as ``<dataset>/<value>``; ``a.b`` reads field ``b`` of ``a``
    (``metadata.type``). A question without the field is an error."""
    question_field: str | None = None
    """Field of the question when it is not ``question``; ``a.b`` reads field ``b`` of ``a``."""
    answers_field: str | None = None
    """Field of the golden answers (a string or a list of strings) when it is none of ``golden_answers``,
    ``answers``, ``answer``, ``target``; ``a.b`` reads field ``b`` of ``a``."""
    id_field: str | None = None
    """Field of the question id when it is neither ``id`` nor ``_id``; unset and absent, ids are
    ``<file stem>-<row number>``."""

    def __post_init__(self) -> None:
        if (self.path is None) == (self.hub is None):
            raise ValueError(f"{self.label}: give exactly one of path and hub")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"{self.label}: limit must be at least 1 (got {self.limit})")
        for option in ("group_by", "question_field", "answers_field", "id_field"):
            value = getattr(self, option)
            if value is not None and not value.strip():
                raise ValueError(f"{self.label}: {option} is empty")

    @property
    def label(self) -> str:
        """How errors name this set: ``eval set 'nq'`` or, without a name, its file or hub dataset."""
        return f"eval set {self.name or self.path or self.hub or '(unnamed)'!r}"


def load_eval_sets(sets: list[EvalSet]) -> dict[str, list[QARecord]]:
    """Datasets of all ``sets``, in order: name -> records.

    Two datasets of one name, or one named ``avg`` (the mean row of the results), is an error.
    """
    datasets: dict[str, list[QARecord]] = {}
    origin: dict[str, str] = {}
    for eval_set in sets:
        for name, records in load_eval_set(eval_set).items():
            if name in _RESERVED:
                raise ValueError(f"{eval_set.label}: dataset name {name!r} is reserved for the mean row")
            if name in datasets:
                raise ValueError(f"dataset {name!r} comes from both {origin[name]} and {eval_set.label}; "
                                 "give them different names")  # fmt: skip
            datasets[name], origin[name] = records, eval_set.label
    return datasets


def load_eval_set(eval_set: EvalSet) -> dict[str, list[QARecord]]:
    """Datasets of one source: name -> records (several for a Search-R1 parquet file or with ``group_by``).

    A file read before, unchanged since, is not read again: the command line checks the files before the
    run starts, and the data module's set-up then takes the same records.
    """
    key = _cache_key(eval_set)
    if key is None:
        return _load_eval_set(eval_set)
    if key not in _LOADED:
        _LOADED[key] = _load_eval_set(eval_set)
        while len(_LOADED) > _CACHED_FILES:
            _LOADED.pop(next(iter(_LOADED)))
    return {name: list(records) for name, records in _LOADED[key].items()}


_LOADED: dict[tuple, dict[str, list[QARecord]]] = {}
_CACHED_FILES = 16


def _cache_key(eval_set: EvalSet) -> tuple | None:
    """The set's settings and its file's content digest; None (not cached) for hub sets and missing files."""
    if eval_set.path is None or not Path(eval_set.path).is_file():
        return None
    # The content, not the modification time: a file rewritten within the clock's resolution is still new.
    digest = hashlib.blake2b(digest_size=16)
    with Path(eval_set.path).open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return (*astuple(eval_set), str(Path(eval_set.path).resolve()), digest.hexdigest())


def _load_eval_set(eval_set: EvalSet) -> dict[str, list[QARecord]]:
    if eval_set.hub is not None:
        source = f"{HUB_REPO} {eval_set.hub!r} split {eval_set.split!r}"
        name = eval_set.name or eval_set.hub
        sources = {name: _numbered(_hub_rows(eval_set), source, eval_set, eval_set.hub)}
    else:
        path = Path(eval_set.path)
        if not path.is_file():
            raise FileNotFoundError(f"{eval_set.label}: {path} does not exist")
        source = str(path)
        if path.suffix == ".parquet":
            sources = _parquet_sources(path, eval_set)
        else:
            rows = _numbered(_json_rows(path), source, eval_set, path.stem)
            sources = {eval_set.name or _stem_name(path): rows}
    if not sources:
        raise ValueError(f"{eval_set.label}: {source} has no questions")
    out: dict[str, list[QARecord]] = {}
    for name, rows in sources.items():
        rows = rows[: eval_set.limit] if eval_set.limit else rows
        if not rows:
            raise ValueError(f"{eval_set.label}: {source} has no questions")
        if eval_set.group_by is None:
            out[name] = [record for _, record in rows]
            continue
        groups: dict[str, list[QARecord]] = {}
        for number, record in rows:
            value = _field(record, eval_set.group_by)
            if value is None:
                raise ValueError(f"{source}: row {number} has no {eval_set.group_by!r} to group by")
            groups.setdefault(f"{name}/{value}", []).append(record)
        out.update(sorted(groups.items()))
    return out


def _record(row: dict, source: object, number: int, eval_set: EvalSet, stem: str) -> QARecord:
    # The row number in the file makes an id that is the same on every load, and the stem keeps files apart.
    return qa_record(row, source, number, question_field=eval_set.question_field,
                     answers_field=eval_set.answers_field, id_field=eval_set.id_field,
                     default_id=f"{stem}-{number}")  # fmt: skip


def _numbered(rows: Iterator[dict], source: str, eval_set: EvalSet, stem: str) -> list[tuple[int, QARecord]]:
    return [(number, _record(row, source, number, eval_set, stem)) for number, row in enumerate(rows, start=1)]


def _stem_name(path: Path) -> str:
    # FlashRAG's own layout is <dataset>/<split>.jsonl, where the stem says nothing about the dataset.
    return path.parent.name if path.stem.lower() in _SPLIT_NAMES and path.parent.name else path.stem


def _json_rows(path: Path) -> Iterator[dict]:
    """Rows of JSON lines, or of one JSON array (HotpotQA's layout), whatever the file's suffix."""
    rows: Iterable[Any] = read_jsonl(path)
    if is_json_array(path):
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a valid JSON array ({e.msg} at line {e.lineno}, column {e.colno})") from None
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: row {number} is not an object")
        yield row


def _hub_rows(eval_set: EvalSet) -> Iterator[dict]:
    import datasets  # imported here: the hub path is the only user, and the import is slow

    try:
        dataset = datasets.load_dataset(HUB_REPO, eval_set.hub, split=eval_set.split)
    except Exception as e:  # any failure (no network, unknown name or split) is reported the same way
        detail = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
        raise RuntimeError(f"{eval_set.label}: cannot load {HUB_REPO} {eval_set.hub!r} split {eval_set.split!r} "
                           f"from the Hugging Face Hub ({type(e).__name__}: {detail}); without a network, "
                           "download the file and give path instead") from None  # fmt: skip
    yield from dataset


def _parquet_sources(path: Path, eval_set: EvalSet) -> dict[str, list[tuple[int, QARecord]]]:
    """Records of a parquet file, one list per ``data_source`` (one list named after the set without it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        columns = pq.read_schema(path).names
    except (pa.ArrowInvalid, OSError) as e:  # empty, truncated, or not parquet at all
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{path}: not a readable parquet file ({detail})") from None
    wanted = [c for c in _PARQUET_COLUMNS if c in columns]
    named = (eval_set.group_by, eval_set.question_field, eval_set.answers_field, eval_set.id_field)
    for column in (field.split(".")[0] for field in named if field):
        if column in columns and column not in wanted:
            wanted.append(column)
    table = pq.read_table(path, columns=wanted)
    sources: dict[str, list[tuple[int, QARecord]]] = {}
    number = 0
    for batch in table.to_batches():  # batch by batch: a full Search-R1 test file is 51k rows
        for row in batch.to_pylist():
            number += 1
            source = row.get("data_source")
            if "data_source" in columns and (not isinstance(source, str) or not source):
                raise ValueError(f"{path}: row {number} has no data_source")
            if "data_source" in columns:
                name = f"{eval_set.name}/{source}" if eval_set.name else source
            else:
                name = eval_set.name or _stem_name(path)
            record = _record(_parquet_row(row, path, number, eval_set), path, number, eval_set, path.stem)
            sources.setdefault(name, []).append((number, record))
    return sources


def _parquet_row(row: dict[str, Any], path: Path, number: int, eval_set: EvalSet) -> dict[str, Any]:
    """A Search-R1 parquet row as a QA row: the question from the prompt and the answers from the ground truth
    where the row has no question or answers columns."""
    out = {k: v for k, v in row.items() if k not in ("prompt", "reward_model")}
    question = row.get("question")
    if eval_set.question_field is None and (not isinstance(question, str) or not question.strip()):
        question = _question_from_prompt(row.get("prompt"))
        if not question:
            raise ValueError(f"{path}: row {number} has no question (no 'question' column or user prompt)")
        out["question"] = question
    if eval_set.answers_field is None and not any(answer_list(row.get(f)) for f in ANSWER_FIELDS):
        truth = _ground_truth(row.get("reward_model"), path, number)
        if not truth:
            raise ValueError(f"{path}: row {number} has no golden answers (none of "
                             f"{', '.join(map(repr, ANSWER_FIELDS))} nor reward_model.ground_truth)")  # fmt: skip
        for f in ANSWER_FIELDS:
            out.pop(f, None)
        out["golden_answers"] = truth
    for f in ID_FIELDS:  # a null id column is no id
        if out.get(f) is None:
            out.pop(f, None)
    return out


def _ground_truth(reward_model: Any, path: Path, number: int) -> list[str] | None:
    """The answers of Search-R1's ``reward_model.ground_truth``: ``{"target": ...}``, a list or a string, each
    possibly JSON-encoded in a string (as DeepResearcher writes it); None when there is none."""
    if reward_model is None:
        return None
    reward_model = _json_decoded(reward_model)
    if not isinstance(reward_model, dict):
        raise ValueError(f"{path}: row {number}: reward_model is not a struct with ground_truth "
                         f"(got {_kind(reward_model)})")  # fmt: skip
    truth = _json_decoded(reward_model.get("ground_truth"))
    if truth is None:
        return None
    field = "reward_model.ground_truth"
    if isinstance(truth, dict):
        if "target" not in truth:
            raise ValueError(f"{path}: row {number}: {field} has no 'target' (keys: {', '.join(map(str, truth))})")
        truth, field = _json_decoded(truth["target"]), f"{field}.target"
    answers = answer_list(truth)
    if answers is None:
        raise ValueError(f"{path}: row {number}: {field} is not a string or a list of strings (got {_kind(truth)})")
    return answers


def _json_decoded(value: Any) -> Any:
    """A string holding a JSON object, array or string, decoded; any other value (``Paris``, ``1984``) as it is."""
    if not isinstance(value, str):
        return value
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    return decoded if isinstance(decoded, dict | list | str) else value


def _kind(value: Any) -> str:
    """A value's type in an error, with the start of its text."""
    text = json.dumps(value, default=str)
    return f"{type(value).__name__} {text[:40] + '...' if len(text) > 40 else text}"


def _question_from_prompt(prompt: Any) -> str | None:
    """The question of a Search-R1 prompt: the text after the last ``Question:`` of the last user message.

    Search-R1 writes its instructions first and ``Question: ...`` last; a user message without the marker is taken
    whole, as the question itself.
    """
    if isinstance(prompt, str):
        content = prompt
    elif isinstance(prompt, list) and prompt:
        users = [m for m in prompt if isinstance(m, dict) and m.get("role", "user") == "user"]
        content = users[-1].get("content") if users else None
    else:
        content = None
    if not isinstance(content, str):
        return None
    marker = content.rfind("Question:")
    question = content[marker + len("Question:") :] if marker >= 0 else content
    return question.strip() or None


def _field(record: QARecord, dotted: str) -> Any:
    """The value of ``a.b`` in a record's id and extra fields; None when a step is missing."""
    return field_value({"id": record.id, "question": record.question, **dict(record.extra)}, dotted)
