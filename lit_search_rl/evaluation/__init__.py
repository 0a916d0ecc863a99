"""Evaluation: per-question results, pass@k, summary tables and an LLM judge."""

from lit_search_rl.evaluation.judge import JudgeConfig, LLMJudge, parse_verdict
from lit_search_rl.evaluation.results import (
    AVG,
    QuestionResult,
    pass_at_k,
    score_question,
    summarize,
    write_tables,
)

__all__ = [
    "AVG",
    "JudgeConfig",
    "LLMJudge",
    "QuestionResult",
    "parse_verdict",
    "pass_at_k",
    "score_question",
    "summarize",
    "write_tables",
]
