"""pass@k, per-question scoring, the per-dataset summary, the Markdown and CSV tables and the predictions file."""

from __future__ import annotations

import csv
import json
import math
from itertools import combinations
from pathlib import Path

import pytest

from lit_search_rl.data.qa import QARecord
from lit_search_rl.evaluation.results import (
    AVG,
    QuestionResult,
    pass_at_k,
    score_question,
    summarize,
    write_predictions,
    write_tables,
)


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [(5, 2, 2, 1 - 3 / 10), (8, 3, 3, 1 - 10 / 56), (10, 1, 1, 0.1), (4, 0, 2, 0.0), (4, 3, 2, 1.0), (1, 1, 1, 1.0)],
)
def test_pass_at_k_by_hand(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_the_share_of_k_subsets_holding_a_correct_sample() -> None:
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                subsets = list(combinations(range(n), k))  # samples 0..c-1 are the correct ones
                share = sum(any(i < c for i in subset) for subset in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(share, abs=1e-12), (n, c, k)


def test_pass_at_k_large_n_matches_the_binomials() -> None:
    for n, c, k in [(200, 7, 10), (500, 1, 1), (1000, 990, 5)]:
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize(("n", "c", "k"), [(3, 0, 4), (0, 0, 1), (3, 4, 1), (3, -1, 1), (3, 1, 0)])
def test_pass_at_k_rejects_impossible_counts(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError, match="pass@"):
        pass_at_k(n, c, k)


def result(dataset: str, em: float, correct: int = 0, samples: int = 4, judge: bool | None = None) -> QuestionResult:
    return QuestionResult(dataset, "id", "q", ("a",), "a" if em else "b", em=em, f1=em, samples=["x"] * samples,
                          sample_correct=correct, response_length=100.0, searches=2.0, judge=judge)  # fmt: skip


def test_score_question_reuses_the_reward_normalisation() -> None:
    record = QARecord("7", "Who wrote Hamlet?", ("William Shakespeare",))
    scored = score_question("nq", record, "william  shakespeare.", samples=["Shakespeare", "The William Shakespeare",
                            None], response_length=50, searches=1.5)  # fmt: skip
    assert (scored.em, scored.f1, scored.sample_correct) == (1.0, 1.0, 1)
    assert scored.id == "7" and scored.samples[2] is None and scored.judge is None
    assert score_question("nq", record, None).em == 0.0


def test_summarize_rows_and_unweighted_average() -> None:
    results = [result("nq", 1.0, 4), result("nq", 0.0, 1), result("hotpotqa", 1.0, 0, judge=True),
               result("hotpotqa", 1.0, 2, judge=False), result("hotpotqa", 0.0, 0, judge=True)]  # fmt: skip
    summary = summarize(results, ks=[2])
    assert list(summary) == ["nq", "hotpotqa", AVG]
    nq, hotpot, avg = summary["nq"], summary["hotpotqa"], summary[AVG]
    assert nq["n"] == 2 and nq["em"] == nq["pass@1"] == 0.5
    assert nq["pass@2"] == pytest.approx((1.0 + pass_at_k(4, 1, 2)) / 2)
    assert "judge" not in nq and hotpot["judge"] == pytest.approx(2 / 3)
    assert avg["n"] == 5 and avg["em"] == pytest.approx((0.5 + 2 / 3) / 2)  # not the pooled 3/5
    assert "judge" not in avg  # only when every dataset was judged
    assert avg["searches"] == 2.0 and avg["response_length"] == 100.0


def test_summarize_errors() -> None:
    with pytest.raises(ValueError, match="k >= 2"):
        summarize([result("nq", 1.0)], ks=[1])
    with pytest.raises(ValueError, match="pass@8: question 'id' of 'nq' has 4 samples"):
        summarize([result("nq", 1.0)], ks=[8])
    with pytest.raises(ValueError, match="judge all or none"):
        summarize([result("nq", 1.0, judge=True), result("nq", 1.0)])
    with pytest.raises(ValueError, match="reserved"):
        summarize([result(AVG, 1.0)])
    with pytest.raises(ValueError, match="no results"):
        summarize([])


def test_tables_are_written_and_read_back(tmp_path: Path) -> None:
    results = [result("nq", 1.0, 3, judge=True), result("nq", 0.0, 0, judge=False),
               result("musique", 0.0, 1, judge=False)]  # fmt: skip
    summary = summarize(results, ks=[4, 2])
    markdown, table = write_tables(summary, tmp_path / "out", stem="test")
    assert (markdown.name, table.name) == ("test.md", "test.csv")
    assert sorted(p.name for p in markdown.parent.iterdir()) == ["test.csv", "test.md"]  # no temporary left
    header = ["dataset", "n", "em", "f1", "pass@1", "pass@2", "pass@4", "judge", "response_length", "searches"]
    with table.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == header and [row[0] for row in rows[1:]] == ["nq", "musique", AVG]
    for row in rows[1:]:
        expected = summary[row[0]]
        assert int(row[1]) == expected["n"]
        assert [float(v) for v in row[2:]] == pytest.approx([expected[key] for key in header[2:]], abs=1e-6)
    lines = markdown.read_text().splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert cells[0] == header and set(cells[1]) == {"---", "---:"}
    nq = dict(zip(header, cells[2], strict=True))
    assert nq["em"] == "50.0" and nq["judge"] == "50.0" and nq["pass@4"] == "50.0" and nq["searches"] == "2.00"
    assert cells[-1][0] == AVG and cells[-1][1] == "3"

    write_tables(summarize([result("nq", 1.0)]), tmp_path / "out", stem="test")  # replaces, with fewer columns
    assert table.read_text().splitlines()[0] == "dataset,n,em,f1,pass@1,response_length,searches"


def test_the_predictions_file_holds_one_line_per_question(tmp_path: Path) -> None:
    record = QARecord("q7", "Where was Ann born?", ("Paris",))
    greedy = score_question("chain", record, "paris", samples=["Rome", "Paris"], searches=2.0,
                            queries=["Ann birthplace", "Paris country"], finish_reason="answered",
                            trajectory="<think> x </think>")  # fmt: skip
    silent = score_question("chain", QARecord("q8", "Who?", ("Bo",)), None, finish_reason="max_turns")
    path = write_predictions([greedy, silent], tmp_path / "test-step0.predictions.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test-step0.predictions.jsonl"]  # no temporary left
    first, second = [json.loads(line) for line in path.read_text().splitlines()]
    assert first == {
        "dataset": "chain", "id": "q7", "question": "Where was Ann born?", "golden_answers": ["Paris"],
        "answer": "paris", "em": 1.0, "f1": 1.0, "searches": 2, "queries": ["Ann birthplace", "Paris country"],
        "finish_reason": "answered", "samples": ["Rome", "Paris"], "sample_correct": 1,
        "trajectory": "<think> x </think>",
    }  # fmt: skip
    assert second["answer"] is None and second["em"] == 0.0 and second["searches"] == 0
    assert "samples" not in second and "trajectory" not in second  # only what the evaluation produced
