"""Question records: QA rows in (FlashRAG's and other authors' layouts), ``QARecord`` out.

The training data module (``RecyclingDataModule``) and the evaluation sets
all hold their questions as these records.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lit_search_rl.io import read_jsonl

ANSWER_FIELDS = ("golden_answers", "answers", "answer", "target")
"""Fields read for the golden answers, first present first: FlashRAG, NQ-open and R1-Searcher, other converters."""
ID_FIELDS = ("id", "_id")
"""Fields read for the question id (``_id`` is HotpotQA's and 2WikiMultihopQA's)."""


@dataclass(frozen=True)
class QARecord:
    """One question: ``id``, ``question``, ``golden_answers`` and any extra fields (``family``, ``hops``)."""

    id: str
    question: str
    golden_answers: tuple[str, ...]
    extra: tuple[tuple[str, object], ...] = ()


def answer_list(value: Any) -> list[str] | None:
    """Golden answers as stripped, non-empty strings; None when ``value`` is not a string or a list of strings.

    A lone string is one answer. Numbers count as their text (some files store years as numbers), alone or
    in a list. Every file format reads its answers through this one rule.
    """
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list | tuple):
        return None
    if not all(isinstance(a, str | int | float) and not isinstance(a, bool) for a in value):
        return None
    return [text for text in (str(a).strip() for a in value) if text]


def field_value(row: dict, dotted: str) -> Any:
    """The value of ``a.b`` (field ``b`` of field ``a``) in ``row``; None when a step is missing."""
    value: Any = row
    for key in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def qa_record(
    row: dict,
    source: object,
    number: int,
    *,
    question_field: str | None = None,
    answers_field: str | None = None,
    id_field: str | None = None,
    default_id: str | None = None,
) -> QARecord:
    """The record of one row; a row without a question or answers is an error naming ``source``, row and field.

    Unset fields take the common names: ``question``, the first of ``ANSWER_FIELDS`` present, the first of
    ``ID_FIELDS`` present. ``number`` is the 1-based row number; a row without an id takes ``default_id``, or
    ``number - 1`` without one.
    """
    question_field = question_field or "question"
    question = field_value(row, question_field)
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{source}: row {number} has no {question_field!r}")
    if answers_field is None:
        answers_field = next((f for f in ANSWER_FIELDS if row.get(f) is not None), None)
        if answers_field is None:
            raise ValueError(f"{source}: row {number} has no golden answers (none of "
                             f"{', '.join(map(repr, ANSWER_FIELDS))}; answers_field names another)")  # fmt: skip
    elif field_value(row, answers_field) is None:
        raise ValueError(f"{source}: row {number} has no {answers_field!r}")
    answers = answer_list(field_value(row, answers_field))
    if answers is None:
        raise ValueError(f"{source}: row {number}: {answers_field!r} is not a string or a list of strings")
    if not answers:
        raise ValueError(f"{source}: row {number}: {answers_field!r} has no answer")
    if id_field is not None:
        if field_value(row, id_field) is None:
            raise ValueError(f"{source}: row {number} has no {id_field!r}")
    else:
        id_field = next((f for f in ID_FIELDS if row.get(f) is not None), None)
    qid = field_value(row, id_field) if id_field else (str(number - 1) if default_id is None else default_id)
    used = {question_field, answers_field, id_field}
    extra = tuple(sorted((k, v) for k, v in row.items() if k not in used))
    return QARecord(str(qid), question, tuple(answers), extra)


def load_qa(path: Path) -> list[QARecord]:
    """QA rows of a JSON-lines file; a row without a question or answers is an error naming file and row."""
    return [qa_record(row, path, number) for number, row in enumerate(read_jsonl(path), start=1)]
