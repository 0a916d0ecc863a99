"""Evaluation datasets: FlashRAG JSON lines, Search-R1 parquet files and the FlashRAG hub collection.

Every source becomes one or more named lists of ``QARecord``; the names are the ``<dataset>`` of
the ``val/<dataset>/em`` tags and the rows of the results tables.

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

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lit_search_rl.data.qa import QARecord, qa_record
from lit_search_rl.io import read_jsonl

HUB_REPO = "RUC-NLPIR/FlashRAG_datasets"
"""The Hugging Face dataset repository whose configurations ``EvalSet.hub`` names."""

# Columns of a Search-R1 parquet file read into a record; others (the bulky ``metadata``) only when grouped by.
_PARQUET_COLUMNS = (
    "id",
    "question",
    "golden_answers",
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

    def __post_init__(self) -> None:
        if (self.path is None) == (self.hub is None):
            raise ValueError(f"{self.label}: give exactly one of path and hub")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"{self.label}: limit must be at least 1 (got {self.limit})")
        if self.group_by is not None and not self.group_by.strip():
            raise ValueError(f"{self.label}: group_by is empty")

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
    """Datasets of one source: name -> records (several for a Search-R1 parquet file or with ``group_by``)."""
    if eval_set.hub is not None:
        source = f"{HUB_REPO} {eval_set.hub!r} split {eval_set.split!r}"
        name = eval_set.name or eval_set.hub
        sources = {name: _numbered(_hub_rows(eval_set), source)}
    else:
        path = Path(eval_set.path)
        if not path.is_file():
            raise FileNotFoundError(f"{eval_set.label}: {path} does not exist")
        source = str(path)
        if path.suffix == ".parquet":
            sources = _parquet_sources(path, eval_set)
        else:
            sources = {eval_set.name or _stem_name(path): _numbered(_json_rows(path), source)}
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


def _numbered(rows: Iterator[dict], source: str) -> list[tuple[int, QARecord]]:
    return [(number, qa_record(row, source, number)) for number, row in enumerate(rows, start=1)]


def _stem_name(path: Path) -> str:
    # FlashRAG's own layout is <dataset>/<split>.jsonl, where the stem says nothing about the dataset.
    return path.parent.name if path.stem.lower() in _SPLIT_NAMES and path.parent.name else path.stem


def _json_rows(path: Path) -> Iterator[dict]:
    """Rows of JSON lines, or of one JSON array in a ``.json`` file."""
    if path.suffix == ".json":
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not a valid JSON array ({e.msg} at line {e.lineno})") from None
            for number, row in enumerate(rows, start=1):
                if not isinstance(row, dict):
                    raise ValueError(f"{path}: row {number} is not an object")
                yield row
            return
    for number, row in enumerate(read_jsonl(path), start=1):
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
    import pyarrow.parquet as pq

    columns = pq.read_schema(path).names
    wanted = [c for c in _PARQUET_COLUMNS if c in columns]
    group_column = eval_set.group_by.split(".")[0] if eval_set.group_by else None
    if group_column in columns and group_column not in wanted:
        wanted.append(group_column)
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
            sources.setdefault(name, []).append((number, qa_record(_flashrag_row(row, path, number), path, number)))
    return sources


def _flashrag_row(row: dict[str, Any], path: Path, number: int) -> dict[str, Any]:
    """A Search-R1 parquet row as a FlashRAG row: question and golden answers from the columns or the prompt."""
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        question = _question_from_prompt(row.get("prompt"))
    if not question:
        raise ValueError(f"{path}: row {number} has no question (no 'question' column or user prompt)")
    answers = _answer_list(row.get("golden_answers"))
    if not answers:
        target = ((row.get("reward_model") or {}).get("ground_truth") or {}).get("target")
        answers = _answer_list(target)
    if not answers:
        raise ValueError(f"{path}: row {number} has no golden answers "
                         "(no 'golden_answers' nor reward_model.ground_truth.target)")  # fmt: skip
    out = {k: v for k, v in row.items() if k not in ("prompt", "reward_model")}
    out.update(question=question, golden_answers=answers)
    if out.get("id") is None:
        out.pop("id", None)
    return out


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


def _answer_list(value: Any) -> list[str]:
    """Answers as a list of non-empty strings; a lone string (as some targets are) is a list of one."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        return []
    # Numbers stand for themselves ("35"); pyarrow hands back lists, never numpy arrays.
    return [str(a).strip() for a in value if a is not None and str(a).strip()]


def _field(record: QARecord, dotted: str) -> Any:
    """The value of ``a.b`` in a record's id and extra fields; None when a step is missing."""
    value: Any = {"id": record.id, "question": record.question, **dict(record.extra)}
    for key in dotted.split("."):
        if not isinstance(value, dict) or value.get(key) is None:
            return None
        value = value[key]
    return value
