"""``lit-search-rl test`` end to end: per-dataset tables, pass@k, the LLM judge, real dataset files."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

from lit_search_rl.lightning_cli import SearchRLCLI
from tests.test_judge import ChatServer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def run_test(
    tmp_path: Path, model_dir: Path, retriever: Path, sets: list[str], *extra: str, subcommand: str = "test"
) -> SearchRLCLI:
    split = "test_sets" if subcommand == "test" else "val_sets"
    args = [
        subcommand,
        "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger",
        "--trainer.logger.save_dir", str(tmp_path / "logs"),
        "--model", "lit_search_rl.grpo.GRPOModule",
        "--model.model", str(model_dir), "--model.retriever", str(retriever),
        "--model.rollout.max_turns", "2", "--model.rollout.max_new_tokens_per_turn", "8",
        "--data", "lit_search_rl.data.eval_data.EvalDataModule", "--data.eval_batch_size", "64",
        *(f"--data.{split}+={s}" for s in sets),
        *extra,
    ]  # fmt: skip
    return SearchRLCLI(args=args)


def read_csv(tmp_path: Path) -> dict[str, dict[str, str]]:
    [table] = list((tmp_path / "logs").rglob("test-step0.csv"))
    assert table.with_suffix(".md").is_file()
    with open(table) as f:
        return {row["dataset"]: row for row in csv.DictReader(f)}


def test_synthetic_test_sets_give_tables_and_metrics(tmp_path: Path, model_dir: Path, world_dir: Path,
                                                     bm25_dir: Path) -> None:  # fmt: skip
    sets = [f'{{"path": "{world_dir / "test" / f}.jsonl", "limit": 3}}' for f in ("chain", "comparison")]
    cli = run_test(tmp_path, model_dir, bm25_dir, sets, "--model.evaluation.n_samples", "3",
                   "--model.evaluation.ks", "[2, 3]")  # fmt: skip
    summary = cli.model.last_evaluation
    assert list(summary) == ["chain", "comparison", "avg"] and summary["chain"]["n"] == 3
    assert summary["chain"]["pass@3"] >= summary["chain"]["pass@2"]
    rows = read_csv(tmp_path)
    assert set(rows) == {"chain", "comparison", "avg"} and "pass@3" in rows["avg"]
    logged = cli.trainer.callback_metrics
    assert {"test/chain/em", "test/comparison/f1", "test/avg/em", "test/avg/pass@2"} <= set(logged)


@pytest.mark.parametrize("subcommand", ["test", "validate"])
def test_evaluations_write_a_predictions_file_beside_the_tables(
    tmp_path: Path, model_dir: Path, world_dir: Path, bm25_dir: Path, caplog: pytest.LogCaptureFixture,
    subcommand: str,
) -> None:  # fmt: skip
    sets = [f'{{"path": "{world_dir / "test" / f}.jsonl", "limit": 3}}' for f in ("chain", "comparison")]
    with caplog.at_level(logging.INFO):
        cli = run_test(tmp_path, model_dir, bm25_dir, sets, "--model.evaluation.n_samples", "2",
                       "--model.evaluation.trajectories", "true", subcommand=subcommand)  # fmt: skip
    stage = "test" if subcommand == "test" else "val"
    [path] = list((tmp_path / "logs").rglob(f"{stage}-step0.predictions.jsonl"))
    assert path == cli.model.last_predictions and path.with_name(f"{stage}-step0.md").is_file()
    assert f"predictions: {path}" in caplog.text  # the end of `test` says where it is
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    questions = {row["id"]: row["question"] for row in map(json.loads, (world_dir / "test/chain.jsonl").open())}
    assert [r["dataset"] for r in rows] == ["chain"] * 3 + ["comparison"] * 3
    assert all(questions[r["id"]] == r["question"] for r in rows[:3])
    for row, result in zip(rows, cli.model.last_results, strict=True):
        assert (row["answer"], row["em"], row["queries"]) == (result.answer, result.em, result.queries)
        assert row["searches"] == len(row["queries"]) and len(row["samples"]) == 2
        assert row["finish_reason"] in ("answered", "max_turns", "length", "invalid")
        assert row["trajectory"] and ("<information>" in row["trajectory"]) == bool(row["searches"])


def test_the_llm_judge_grades_the_greedy_answers(tmp_path: Path, model_dir: Path, world_dir: Path,
                                                 bm25_dir: Path) -> None:  # fmt: skip
    server = ChatServer()
    import threading

    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sets = [f'{{"path": "{world_dir / "test" / "chain.jsonl"}", "limit": 4}}']
        cli = run_test(tmp_path, model_dir, bm25_dir, sets, "--model.evaluation.judge.model", "judge-model",
                       "--model.evaluation.judge.url", server.url)  # fmt: skip
    finally:
        server.shutdown()
    assert "judge" in cli.model.last_evaluation["chain"]
    answered = [r for r in cli.model.evaluation.results if r.answer]
    assert len(server.requests) == len(answered)  # no answer: no request
    assert "test/chain/judge" in cli.trainer.callback_metrics


def test_search_r1_parquet_and_wiki18_run_through_test(tmp_path: Path, model_dir: Path) -> None:
    parquet, corpus = SHARED / "searchr1-7datasets-val112.parquet", SHARED / "wiki18-sample-1000.jsonl"
    if not parquet.is_file() or not corpus.is_file():
        pytest.skip("the shared data folder sits next to the clone")
    from lit_search_rl.retrieval.index import build_index

    build_index(corpus, tmp_path / "wiki18", "bm25", progress=False)
    run_test(tmp_path, model_dir, tmp_path / "wiki18", [f'{{"path": "{parquet}"}}'])
    rows = read_csv(tmp_path)
    expected = {"nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle", "avg"}
    assert set(rows) == expected
    assert all(rows[d]["n"] == "16" for d in expected - {"avg"}) and rows["avg"]["n"] == "112"


def test_a_missing_test_file_is_named_before_any_work(tmp_path: Path, model_dir: Path, bm25_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        run_test(tmp_path, model_dir, bm25_dir, ['{"path": "nowhere.jsonl"}'])


def test_a_retriever_service_subprocess_serves_the_evaluation(tmp_path: Path, model_dir: Path, world_dir: Path,
                                                              bm25_dir: Path) -> None:  # fmt: skip
    sets = [f'{{"path": "{world_dir / "test" / "chain.jsonl"}", "limit": 2}}']
    args = ["--trainer.callbacks+=lit_search_rl.callbacks.retriever_service.RetrieverService",
            f"--trainer.callbacks.init_args.index={bm25_dir}", "--trainer.callbacks.init_args.mode=subprocess",
            "--model.retriever", "null"]  # fmt: skip
    cli = run_test(tmp_path, model_dir, bm25_dir, sets, *args)
    service = next(c for c in cli.trainer.callbacks if type(c).__name__ == "RetrieverService")
    assert service.server_pid is None  # stopped at teardown
    assert service.health and len(cli.model.evaluation.results) == 2  # the child answered its health check


@pytest.mark.parametrize("subcommand", ["test", "validate", "fit"])
def test_bad_evaluation_rows_stop_the_run_before_any_log_folder(tmp_path: Path, model_dir: Path, world_dir: Path,
                                                                bm25_dir: Path, subcommand: str) -> None:  # fmt: skip
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q?", "answer": "a"}) + "\n" + json.dumps({"question": "no answer"}) + "\n")
    split = "test_sets" if subcommand == "test" else "val_sets"
    args = [subcommand, "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            "--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger",
            "--trainer.logger.save_dir", str(tmp_path / "logs"), "--trainer.default_root_dir", str(tmp_path / "root"),
            "--model", "lit_search_rl.grpo.GRPOModule", "--model.model", str(model_dir),
            "--model.retriever", str(bm25_dir), "--model.rollout.max_turns", "1",
            "--data", "lit_search_rl.data.qa_datamodule.QADataModule", "--data.train", str(world_dir / "train.jsonl"),
            f'--data.{split}+={{"path": "{bad}"}}']  # fmt: skip
    with pytest.raises(ValueError, match=rf"data\.{split}\[0\]: .*bad\.jsonl: row 2 has no golden answers"):
        SearchRLCLI(args=args)
    assert not (tmp_path / "logs").exists() and not (tmp_path / "root").exists()


def test_no_lightning_advertising_tips(tmp_path: Path, model_dir: Path, world_dir: Path, bm25_dir: Path,
                                       capfd: pytest.CaptureFixture[str],
                                       caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    sets = [f'{{"path": "{world_dir / "test" / "chain.jsonl"}", "limit": 1}}']
    with caplog.at_level(logging.INFO):
        run_test(tmp_path, model_dir, bm25_dir, sets)
    out, err = capfd.readouterr()
    seen = out + err + caplog.text
    assert "test/chain/em" in seen or read_csv(tmp_path)  # the run itself did report
    assert "litlogger" not in seen and "litmodels" not in seen
