"""Question records: FlashRAG JSON lines in, ``QARecord`` out.

The training data modules (``QADataModule``, ``RecyclingDataModule``) and the evaluation sets
all hold their questions as these records.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lit_search_rl.io import read_jsonl


@dataclass(frozen=True)
class QARecord:
    """One question: ``id``, ``question``, ``golden_answers`` and any extra fields (``family``, ``hops``)."""

    id: str
    question: str
    golden_answers: tuple[str, ...]
    extra: tuple[tuple[str, object], ...] = ()


def qa_record(row: dict, source: object, number: int) -> QARecord:
    """The record of one FlashRAG row; a row without a question or answers is an error naming ``source`` and row.

    ``number`` is the 1-based row number; a row without ``id`` takes ``number - 1``.
    """
    question, answers = row.get("question"), row.get("golden_answers")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{source}: row {number} has no 'question'")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise ValueError(f"{source}: row {number} has no 'golden_answers' list of strings")
    extra = tuple(sorted((k, v) for k, v in row.items() if k not in ("id", "question", "golden_answers")))
    return QARecord(str(row.get("id", number - 1)), question, tuple(answers), extra)


def load_qa(path: Path) -> list[QARecord]:
    """FlashRAG rows of a JSON-lines file; a row without a question or answers is an error naming file and row."""
    return [qa_record(row, path, number) for number, row in enumerate(read_jsonl(path), start=1)]
