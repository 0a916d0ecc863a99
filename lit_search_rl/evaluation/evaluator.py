"""Multi-hop QA evaluation of a search agent: greedy and sampled rollouts, scored per dataset.

``QAEvaluation`` collects the results of one evaluation pass (``validate``, ``test``, or the
validation every ``val_check_interval`` steps during fit) and at its end judges (optionally),
summarises and writes the results tables and the predictions file. The rollouts themselves come from the module, which
owns the policy, the retriever and the agent loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lit_search_rl.data.qa import QARecord
from lit_search_rl.evaluation.judge import JudgeConfig, LLMJudge
from lit_search_rl.evaluation.results import (
    QuestionResult,
    score_question,
    summarize,
    write_predictions,
    write_tables,
)
from lit_search_rl.rollout.agent import Trajectory

# Metrics that become ``<stage>/<dataset>/<metric>`` scalars; the tables carry all columns.
LOGGED = ("em", "f1", "judge", "response_length", "searches")


@dataclass
class EvalConfig:
    """How a search agent is evaluated."""

    n_samples: int = 0
    """Sampled rollouts per question, for pass@k; 0 evaluates the greedy rollout only."""
    ks: list[int] = field(default_factory=list)
    """The k of each reported pass@k (2 <= k <= n_samples); pass@1 is always the greedy exact match."""
    temperature: float = 1.0
    """Temperature of the sampled rollouts."""
    seed: int = 1234
    """Seed of the sampled rollouts, so evaluations are repeatable."""
    judge: JudgeConfig | None = None
    """An LLM judge (OpenAI-compatible chat endpoint) for the greedy answers; unset for none."""
    tables: bool = True
    """Write ``<stage>-step<N>.md`` and ``.csv`` results tables into the log folder."""
    predictions: bool = True
    """Write ``<stage>-step<N>.predictions.jsonl`` beside the tables: per question the answer, EM, F1, searches,
    queries and finish reason (and the sampled answers with pass@k)."""
    trajectories: bool = False
    """Also keep each question's greedy trajectory text (the model's turns and the information blocks) in the
    predictions file."""

    def validate(self) -> None:
        if self.n_samples < 0:
            raise ValueError(f"model.evaluation.n_samples must not be negative (got {self.n_samples})")
        bad = [k for k in self.ks if not 2 <= k <= self.n_samples]
        if bad:
            raise ValueError(f"model.evaluation.ks must lie in [2, n_samples={self.n_samples}] (got {bad})")
        if self.temperature <= 0 and self.n_samples:
            raise ValueError("model.evaluation.temperature must be positive for sampled rollouts")


class QAEvaluation:
    """Results of one evaluation pass, question by question."""

    def __init__(self, config: EvalConfig) -> None:
        config.validate()
        self.config = config
        self.results: list[QuestionResult] = []

    def reset(self) -> None:
        self.results = []

    def add(
        self, dataset: str, records: Sequence[QARecord], greedy: Sequence[Trajectory],
        samples: Sequence[Sequence[Trajectory]] | None = None, texts: Sequence[str] | None = None,
    ) -> None:  # fmt: skip
        """Score one batch: the greedy trajectory and the sampled ones (if any) of each question, and the greedy
        trajectories' whole texts (``texts``) when the predictions keep them."""
        samples = samples or [[] for _ in records]
        texts = texts if texts is not None else [None] * len(records)
        for record, first, sampled, text in zip(records, greedy, samples, texts, strict=True):
            every = [first, *sampled]
            self.results.append(
                score_question(
                    dataset,
                    record,
                    first.answer,
                    [t.answer for t in sampled],
                    response_length=sum(sum(t.loss_mask) for t in every) / len(every),
                    searches=sum(t.num_searches for t in every) / len(every),
                    queries=first.queries,
                    finish_reason=first.finish_reason,
                    trajectory=text,
                )  # fmt: skip
            )

    def finish(self) -> dict[str, dict[str, float]]:
        """Judge the greedy answers when a judge is configured, and summarise per dataset (plus ``avg``)."""
        if self.config.judge is not None:
            judge = LLMJudge(self.config.judge)
            try:
                verdicts = judge.judge_many(
                    [r.question for r in self.results], [r.golden_answers for r in self.results],
                    [r.answer for r in self.results],
                )  # fmt: skip
            finally:
                judge.close()
            for result, verdict in zip(self.results, verdicts, strict=True):
                result.judge = verdict
        return summarize(self.results, self.config.ks)

    def write(self, summary: dict[str, dict[str, float]], folder: Path, stem: str) -> list[Path]:
        """The Markdown and CSV tables of ``summary`` and the predictions file, as configured, in ``folder``."""
        written = list(write_tables(summary, folder, stem)) if self.config.tables else []
        if self.config.predictions:
            written.append(write_predictions(self.results, Path(folder) / f"{stem}.predictions.jsonl"))
        return written


def scalars(stage: str, summary: dict[str, dict[str, float]]) -> dict[str, float]:
    """``<stage>/<dataset>/<metric>`` values of a summary (pass@k included), ready for the loggers."""
    out = {}
    for dataset, row in summary.items():
        for metric, value in row.items():
            if metric in LOGGED or metric.startswith("pass@"):
                out[f"{stage}/{dataset}/{metric}"] = float(value)
    return out
