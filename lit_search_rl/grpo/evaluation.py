"""Evaluation hooks of the GRPO module: ``validate``, ``test`` and validation during fit.

A greedy rollout per question (and samples for pass@k), scored by ``QAEvaluation``; the summary
is logged as ``<stage>/<dataset>/<metric>`` and written with the per-question predictions into
the log folder.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from lit_search_rl.data.eval_data import EvalBatch
from lit_search_rl.evaluation.evaluator import QAEvaluation, scalars
from lit_search_rl.evaluation.results import QuestionResult
from lit_search_rl.rollout.engine import SamplingConfig


class EvaluatesAgent:
    """Lightning's evaluation hooks for a module with ``runner``, ``policy``, ``tokenizer`` and ``evaluation``."""

    evaluation: QAEvaluation
    last_evaluation: dict[str, dict[str, float]] | None  # summary of the latest evaluation
    last_results: list[QuestionResult]  # its questions one by one (every rank holds them all)
    last_predictions: Path | None  # the predictions file it wrote (rank zero)

    def validation_step(self, batch: EvalBatch, batch_idx: int) -> None:
        """One batch of one evaluation dataset: a greedy rollout per question, and samples for pass@k."""
        dataset, questions = batch
        config = self.evaluation.config
        argmax = SamplingConfig(temperature=0.0)
        greedy = [g[0] for g in self.runner.run(self.policy, questions, [1] * len(questions), lambda rank: argmax)]
        samples = None
        if config.n_samples:
            seed = config.seed + 1000 * batch_idx  # repeatable, and the same whatever ran before

            def sampling(rank: int) -> SamplingConfig:
                return SamplingConfig(config.temperature, seed=seed + 7919 * rank)

            samples = self.runner.run(self.policy, questions, [config.n_samples] * len(questions), sampling)
        texts = None
        if config.predictions and config.trajectories:
            texts = [self.tokenizer.decode(t.response_ids, skip_special_tokens=True) for t in greedy]
        self.evaluation.add(dataset, questions, greedy, samples, texts)

    def test_step(self, batch: EvalBatch, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_validation_epoch_start(self) -> None:
        self.evaluation.reset()

    def on_test_epoch_start(self) -> None:
        self.evaluation.reset()

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test")

    def _finish_evaluation(self, stage: str) -> None:
        """Log ``<stage>/<dataset>/<metric>`` and write the results tables and the predictions into the log folder."""
        if not self.evaluation.results:
            return
        summary = self.evaluation.finish()
        self.last_evaluation, self.last_results = summary, list(self.evaluation.results)
        for name, value in scalars(stage, summary).items():
            self.log(name, value, prog_bar=name == f"{stage}/avg/em")
        if self.evaluation.config.tables or self.evaluation.config.predictions:
            folder = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # a collective: every rank asks
            self._write_results(summary, folder, f"{stage}-step{self.global_step}")

    @rank_zero_only
    def _write_results(self, summary: dict, folder: Path, stem: str) -> None:
        for path in self.evaluation.write(summary, folder, stem):
            if path.suffix == ".jsonl":
                self.last_predictions = path
            if path.suffix != ".csv":  # the Markdown table and the predictions; the CSV sits beside the table
                label = "predictions" if path.suffix == ".jsonl" else "evaluation results"
                rank_zero_info(f"{label}: {path}")
