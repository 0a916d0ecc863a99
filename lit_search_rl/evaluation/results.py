"""Per-question evaluation results, pass@k, the per-dataset summary, its Markdown and CSV tables, and the
predictions file (one JSON line per question).

Scores are fractions in [0, 1] everywhere but in the Markdown table, which prints them as
percentages (as papers do). ``pass@1`` is the exact match of the greedy answer; ``pass@k`` for
``k >= 2`` is the unbiased estimate from the n sampled answers of each question.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_search_rl.data.qa import QARecord
from lit_search_rl.io import atomic_write_text
from lit_search_rl.rewards import exact_match, f1_score

AVG = "avg"
"""Name of the summary row that averages the datasets."""

# Score columns (fractions); the others are counts and means printed as they are.
_SCORES = ("em", "f1", "pass@1", "judge")


@dataclass
class QuestionResult:
    """What the agent did on one question."""

    dataset: str
    """Dataset the question belongs to (a row of the tables)."""
    id: str
    """The question's id in its dataset."""
    question: str
    """The question text."""
    golden_answers: tuple[str, ...]
    """Accepted answers."""
    answer: str | None
    """The greedy answer; None when the agent gave none."""
    em: float
    """Exact match of the greedy answer (SQuAD normalisation)."""
    f1: float
    """Token F1 of the greedy answer against its best golden answer."""
    samples: list[str | None] = field(default_factory=list)
    """Answers of the sampled rollouts, for pass@k; empty without sampling."""
    sample_correct: int = 0
    """How many of ``samples`` are an exact match."""
    response_length: float = 0.0
    """Mean response tokens of the question's rollouts."""
    searches: float = 0.0
    """Mean searches of the question's rollouts."""
    judge: bool | None = None
    """The LLM judge's verdict on the greedy answer; None when not judged."""
    queries: list[str] = field(default_factory=list)
    """The queries of the greedy rollout, in order."""
    finish_reason: str | None = None
    """How the greedy rollout ended: ``answered``, ``max_turns``, ``length`` or ``invalid``."""
    trajectory: str | None = None
    """The greedy rollout's whole text after the prompt (the model's turns and the information blocks), when
    asked for."""


def score_question(
    dataset: str,
    record: QARecord,
    answer: str | None,
    samples: Sequence[str | None] = (),
    response_length: float = 0.0,
    searches: float = 0.0,
    judge: bool | None = None,
    queries: Sequence[str] = (),
    finish_reason: str | None = None,
    trajectory: str | None = None,
) -> QuestionResult:
    """The result of one question, with EM and F1 of ``answer`` and the exact matches among ``samples``."""
    golden = tuple(record.golden_answers)
    return QuestionResult(
        dataset=dataset,
        id=record.id,
        question=record.question,
        golden_answers=golden,
        answer=answer,
        em=exact_match(answer, golden),
        f1=f1_score(answer, golden),
        samples=list(samples),
        sample_correct=sum(int(exact_match(s, golden)) for s in samples),
        response_length=response_length,
        searches=searches,
        judge=judge,
        queries=list(queries),
        finish_reason=finish_reason,
        trajectory=trajectory,
    )


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: ``1 - C(n-c, k) / C(n, k)`` (Chen et al., 2021).

    Computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``, which never forms the huge binomials.
    """
    if n < 1 or k < 1:
        raise ValueError(f"pass@k needs n >= 1 and k >= 1 (got n={n}, k={k})")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n (got c={c}, n={n})")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per question (got n={n})")
    if n - c < k:  # every draw of k holds a correct sample
        return 1.0
    failing = 1.0
    for i in range(n - c + 1, n + 1):
        failing *= 1.0 - k / i
    return 1.0 - failing


def summarize(results: Iterable[QuestionResult], ks: Sequence[int] = ()) -> dict[str, dict[str, float]]:
    """Metrics per dataset (in order of first appearance) and an ``avg`` row, the unweighted mean over datasets.

    Each row has ``n`` (questions; in ``avg`` the total), ``em``, ``f1``, ``pass@1`` (the greedy EM), ``pass@k``
    for each ``k`` in ``ks`` (``k >= 2``; every question needs at least ``k`` samples), ``judge`` (share judged
    correct; only when every question of the dataset was judged), ``response_length`` and ``searches``.
    """
    ks = sorted(set(ks))
    if any(k < 2 for k in ks):
        raise ValueError(f"ks: pass@1 is the greedy exact match; give k >= 2 (got {list(ks)})")
    by_dataset: dict[str, list[QuestionResult]] = {}
    for result in results:
        by_dataset.setdefault(result.dataset, []).append(result)
    if not by_dataset:
        raise ValueError("no results to summarize")
    if AVG in by_dataset:
        raise ValueError(f"dataset name {AVG!r} is reserved for the mean row")
    summary = {name: _dataset_row(name, rows, ks) for name, rows in by_dataset.items()}
    rows = list(summary.values())
    avg: dict[str, float] = {"n": sum(row["n"] for row in rows)}
    for key in rows[0]:
        if key != "n" and all(key in row for row in rows):
            avg[key] = sum(row[key] for row in rows) / len(rows)
    summary[AVG] = avg
    return summary


def _dataset_row(name: str, results: list[QuestionResult], ks: list[int]) -> dict[str, float]:
    n = len(results)
    row: dict[str, float] = {"n": n}
    row["em"] = sum(r.em for r in results) / n
    row["f1"] = sum(r.f1 for r in results) / n
    row["pass@1"] = row["em"]
    for k in ks:
        short = next((r for r in results if len(r.samples) < k), None)
        if short is not None:
            raise ValueError(f"pass@{k}: question {short.id!r} of {name!r} has {len(short.samples)} samples")
        row[f"pass@{k}"] = sum(pass_at_k(len(r.samples), r.sample_correct, k) for r in results) / n
    verdicts = [r.judge for r in results if r.judge is not None]
    if verdicts and len(verdicts) != n:
        # A partly judged dataset would make its judge score incomparable with the others.
        raise ValueError(f"{len(verdicts)} of the {n} questions of {name!r} were judged; judge all or none")
    if verdicts:
        row["judge"] = sum(verdicts) / n
    row["response_length"] = sum(r.response_length for r in results) / n
    row["searches"] = sum(r.searches for r in results) / n
    return row


def columns(summary: dict[str, dict[str, float]]) -> list[str]:
    """The table columns of a summary, in their fixed order: n, em, f1, pass@1, pass@k by k, judge, length, searches."""
    keys = {key for row in summary.values() for key in row}
    passes = sorted((k for k in keys if k.startswith("pass@") and k != "pass@1"), key=lambda k: int(k[5:]))
    order = ["n", "em", "f1", "pass@1", *passes, "judge", "response_length", "searches"]
    return [key for key in order if key in keys]


def write_tables(summary: dict[str, dict[str, float]], folder: Path, stem: str = "results") -> tuple[Path, Path]:
    """Write ``<stem>.md`` (scores in percent) and ``<stem>.csv`` (fractions) into ``folder``, each atomically.

    Rows keep the summary's order, so ``avg`` comes last; a value a row lacks is left empty.
    """
    folder = Path(folder)
    keys = columns(summary)
    header = ["dataset", *keys]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * len(keys)) + " |"]
    for name, row in summary.items():
        lines.append("| " + " | ".join([name] + [_markdown_cell(key, row.get(key)) for key in keys]) + " |")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for name, row in summary.items():
        writer.writerow([name] + [_csv_cell(key, row.get(key)) for key in keys])
    markdown = atomic_write_text(folder / f"{stem}.md", "\n".join(lines) + "\n")
    table = atomic_write_text(folder / f"{stem}.csv", buffer.getvalue())
    return markdown, table


def prediction_row(result: QuestionResult) -> dict[str, Any]:
    """One line of the predictions file: what the agent answered on one question, and how it got there.

    The greedy rollout's answer, scores, searches, queries and finish reason; the sampled answers when the
    evaluation sampled (pass@k); its whole text when the evaluation kept it.
    """
    row: dict[str, Any] = {
        "dataset": result.dataset, "id": result.id, "question": result.question,
        "golden_answers": list(result.golden_answers), "answer": result.answer, "em": result.em, "f1": result.f1,
        "searches": len(result.queries), "queries": result.queries, "finish_reason": result.finish_reason,
    }  # fmt: skip
    if result.judge is not None:
        row["judge"] = result.judge
    if result.samples:
        row["samples"] = result.samples
        row["sample_correct"] = result.sample_correct
    if result.trajectory is not None:
        row["trajectory"] = result.trajectory
    return row


def write_predictions(results: Iterable[QuestionResult], path: Path) -> Path:
    """Write one JSON line per question (``prediction_row``) to ``path``, atomically."""
    lines = (json.dumps(prediction_row(result), ensure_ascii=False) + "\n" for result in results)
    return atomic_write_text(path, "".join(lines))


def _markdown_cell(key: str, value: float | None) -> str:
    if value is None:
        return ""
    if key == "n":
        return str(int(value))
    if key in _SCORES or key.startswith("pass@"):
        return f"{100 * value:.1f}"
    return f"{value:.2f}"


def _csv_cell(key: str, value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if key == "n" else f"{value:.6f}"
