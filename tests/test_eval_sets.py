"""Evaluation dataset loading: the real fixture files, Search-R1 parquet splitting, grouping and bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lit_search_rl.data.eval_sets import HUB_REPO, EvalSet, load_eval_set, load_eval_sets

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SEARCH_R1 = DATA / "searchr1-7datasets-val112.parquet"
NQ = DATA / "flashrag-nq-sample.jsonl"
MUSIQUE = DATA / "musique-100.jsonl"
SOURCES = ["nq", "hotpotqa", "triviaqa", "popqa", "2wikimultihopqa", "musique", "bamboogle"]
INSTRUCTIONS = "Answer the given question. ... For example, <answer> Beijing </answer>. "


def need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} is absent (the shared data folder sits next to the clone)")
    return path


def search_r1_row(question: str | None, target, source: str = "nq", **columns) -> dict:
    prompt = [{"role": "user", "content": f"{INSTRUCTIONS}Question: {question}\n"}] if question else []
    row = {"data_source": source, "prompt": prompt, "ability": "fact-reasoning",
           "reward_model": {"ground_truth": {"target": target}, "style": "rule"},
           "extra_info": {"index": 0, "split": "test"}}  # fmt: skip
    row.update(columns)
    return row


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_search_r1_parquet_is_one_dataset_per_source() -> None:
    datasets = load_eval_sets([EvalSet(path=str(need(SEARCH_R1)))])
    assert sorted(datasets) == sorted(SOURCES) and list(datasets)[0] == "nq"  # first-appearance order
    assert all(len(records) == 16 for records in datasets.values())
    columns = pq.read_table(SEARCH_R1, columns=["question", "golden_answers", "data_source"]).to_pylist()
    for source, records in datasets.items():
        expected = [row for row in columns if row["data_source"] == source]
        assert [r.question for r in records] == [row["question"] for row in expected]
        assert [list(r.golden_answers) for r in records] == [row["golden_answers"] for row in expected]
        assert all(dict(r.extra)["data_source"] == source for r in records)
        assert all("metadata" not in dict(r.extra) for r in records)  # the bulky column is not read


def test_search_r1_name_prefixes_and_limit_is_per_source() -> None:
    datasets = load_eval_set(EvalSet(name="sr1", path=str(need(SEARCH_R1)), limit=3))
    assert sorted(datasets) == sorted(f"sr1/{s}" for s in SOURCES)
    assert all(len(records) == 3 for records in datasets.values())


def test_questions_from_the_prompt_and_answers_from_the_target(tmp_path: Path) -> None:
    # Search-R1's own files may lack the question and golden_answers columns.
    need(SEARCH_R1)
    table = pq.read_table(SEARCH_R1).drop_columns(["id", "question", "golden_answers", "metadata"])
    stripped = tmp_path / "stripped.parquet"
    pq.write_table(table, stripped)
    full = load_eval_sets([EvalSet(path=str(SEARCH_R1))])
    bare = load_eval_sets([EvalSet(path=str(stripped))])
    assert list(bare) == list(full)
    for source in full:
        assert [(r.question, r.golden_answers) for r in bare[source]] == [
            (r.question.strip(), r.golden_answers) for r in full[source]
        ]
        # Without an id column: the file's stem and the row number in the file.
        assert all(re.fullmatch(r"stripped-\d+", r.id) for r in bare[source])
    assert sorted(int(r.id.split("-")[1]) for rs in bare.values() for r in rs) == list(range(1, 113))


def test_string_target_and_a_prompt_without_marker(tmp_path: Path) -> None:
    listed = search_r1_row("Who wrote Hamlet?", ["William Shakespeare", "Shakespeare"])
    # A string target, and a chat prompt whose user message is the bare question.
    bare = search_r1_row(None, "Paris", source="popqa")
    bare["prompt"] = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
    # A list target and a string target cannot share one arrow column: one file each.
    datasets = load_eval_sets([EvalSet(path=str(write_parquet(tmp_path / "a.parquet", [listed]))),
                               EvalSet(path=str(write_parquet(tmp_path / "b.parquet", [bare])))])  # fmt: skip
    assert datasets["nq"][0].question == "Who wrote Hamlet?"
    assert datasets["nq"][0].golden_answers == ("William Shakespeare", "Shakespeare")
    assert datasets["popqa"][0].question == "Capital of France?" and datasets["popqa"][0].golden_answers == ("Paris",)


def test_flashrag_files() -> None:
    datasets = load_eval_sets([EvalSet(path=str(need(NQ))), EvalSet(name="musique", path=str(need(MUSIQUE)))])
    assert list(datasets) == ["flashrag-nq-sample", "musique"]
    lines = [json.loads(line) for line in NQ.read_text().splitlines() if line.strip()]
    assert [r.id for r in datasets["flashrag-nq-sample"]] == [row["id"] for row in lines]
    musique = datasets["musique"]
    assert len(musique) == 100 and musique[0].golden_answers == ("G. Stanley Hall", "Stanley Hall")
    assert "question_decomposition" in dict(musique[0].extra)["metadata"]


def test_group_by_names_each_value(tmp_path: Path) -> None:
    path = tmp_path / "val" / "test.jsonl"  # FlashRAG layout: the folder names the dataset
    path.parent.mkdir()
    kinds = [("iterative", 2), ("chain", 1), ("chain", 3), ("comparison", 2)]
    rows = [{"id": str(i), "question": f"q{i}", "golden_answers": ["a"], "family": family, "meta": {"hops": hops}}
            for i, (family, hops) in enumerate(kinds)]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    by_family = load_eval_set(EvalSet(path=str(path), group_by="family"))
    assert {k: [r.id for r in v] for k, v in by_family.items()} == {
        "val/chain": ["1", "2"], "val/comparison": ["3"], "val/iterative": ["0"]}  # fmt: skip
    by_hops = load_eval_set(EvalSet(name="w", path=str(path), group_by="meta.hops", limit=3))
    assert {k: len(v) for k, v in by_hops.items()} == {"w/1": 1, "w/2": 1, "w/3": 1}
    with pytest.raises(ValueError, match=r"test\.jsonl: row 1 has no 'meta\.size' to group by"):
        load_eval_set(EvalSet(path=str(path), group_by="meta.size"))


def test_group_by_a_parquet_column(tmp_path: Path) -> None:
    rows = [search_r1_row(f"q{i}?", ["a"], source="hotpotqa", metadata={"type": t})
            for i, t in enumerate(["bridge", "comparison", "bridge"])]  # fmt: skip
    datasets = load_eval_set(EvalSet(path=str(write_parquet(tmp_path / "h.parquet", rows)), group_by="metadata.type"))
    assert {k: len(v) for k, v in datasets.items()} == {"hotpotqa/bridge": 2, "hotpotqa/comparison": 1}


def test_json_array_file(tmp_path: Path) -> None:
    path = tmp_path / "bamboogle.json"
    path.write_text(json.dumps([{"id": "a", "question": "q?", "golden_answers": ["x"]}]))
    assert [r.id for r in load_eval_set(EvalSet(path=str(path)))["bamboogle"]] == ["a"]


@pytest.mark.parametrize(
    ("row", "message"),
    [({"id": "x", "golden_answers": ["a"]}, "row 3 has no 'question'"),
     ({"id": "x", "question": "q", "golden_answers": []}, "row 3: 'golden_answers' has no answer")],
)  # fmt: skip
def test_bad_jsonl_row_names_file_and_row(tmp_path: Path, row: dict, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    good = {"id": "ok", "question": "q", "golden_answers": ["a"]}
    path.write_text("".join(json.dumps(r) + "\n" for r in [good, good, row]))
    with pytest.raises(ValueError, match=rf"bad\.jsonl: {message}"):
        load_eval_sets([EvalSet(path=str(path))])


@pytest.mark.parametrize(
    ("bad", "message"),
    [(search_r1_row("q?", []), r"bad\.parquet: row 2 has no golden answers"),
     (search_r1_row(None, ["a"]), r"bad\.parquet: row 2 has no question"),
     (search_r1_row("q?", ["a"], source=""), r"bad\.parquet: row 2 has no data_source")],
)  # fmt: skip
def test_bad_parquet_row_names_file_and_row(tmp_path: Path, bad: dict, message: str) -> None:
    path = write_parquet(tmp_path / "bad.parquet", [search_r1_row("fine?", ["a"]), bad])
    with pytest.raises(ValueError, match=message):
        load_eval_sets([EvalSet(path=str(path))])


def test_set_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="eval set 'x': give exactly one of path and hub"):
        EvalSet(name="x")
    with pytest.raises(ValueError, match="eval set 'y': give exactly one of path and hub"):
        EvalSet(name="y", path="a.jsonl", hub="nq")
    with pytest.raises(ValueError, match="limit must be at least 1"):
        EvalSet(path="a.jsonl", limit=0)
    with pytest.raises(FileNotFoundError, match=r"eval set 'nq': .*missing\.jsonl does not exist"):
        load_eval_sets([EvalSet(name="nq", path=str(tmp_path / "missing.jsonl"))])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="has no questions"):
        load_eval_sets([EvalSet(path=str(empty))])


def test_duplicate_and_reserved_names(tmp_path: Path) -> None:
    path = tmp_path / "nq.jsonl"
    path.write_text(json.dumps({"id": "1", "question": "q", "golden_answers": ["a"]}) + "\n")
    with pytest.raises(ValueError, match="dataset 'nq' comes from both eval set .* and eval set 'nq'"):
        load_eval_sets([EvalSet(path=str(path)), EvalSet(name="nq", path=str(path))])
    with pytest.raises(ValueError, match="'avg' is reserved"):
        load_eval_sets([EvalSet(name="avg", path=str(path))])


def test_hub_loads_through_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls = []

    def fake_load(repo: str, name: str, split: str):
        calls.append((repo, name, split))
        return [{"id": f"dev_{i}", "question": f"q{i}", "golden_answers": ["a"], "metadata": {}} for i in range(5)]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    loaded = load_eval_set(EvalSet(hub="hotpotqa", split="dev", limit=2))
    assert calls == [(HUB_REPO, "hotpotqa", "dev")]
    assert {k: [r.id for r in v] for k, v in loaded.items()} == {"hotpotqa": ["dev_0", "dev_1"]}


def test_hub_failure_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub\nlong traceback text")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError) as info:
        load_eval_sets([EvalSet(hub="nq")])
    message = str(info.value)
    assert "\n" not in message and "eval set 'nq'" in message and HUB_REPO in message
    assert "Couldn't reach the Hub" in message and "give path instead" in message


def test_hub_without_network_fails_clearly() -> None:
    import datasets

    if not datasets.config.HF_HUB_OFFLINE:
        pytest.skip("the Hub is not in offline mode here; a real download would be attempted")
    with pytest.raises(RuntimeError, match=f"eval set 'popqa': cannot load {HUB_REPO} 'popqa' split 'test'"):
        load_eval_sets([EvalSet(hub="popqa")])


def write_lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_authors_answer_fields_and_layouts(tmp_path: Path) -> None:
    # R1-Searcher's sets: a lone answer string, no id.
    r1 = write_lines(tmp_path / "bamboogle.jsonl", [{"question": "Who was president when X?", "answer": "Lincoln"},
                                                    {"question": "Which year?", "answer": "1861"}])  # fmt: skip
    # NQ-open: the answers as a list, no id.
    nq = write_lines(tmp_path / "NQ-open.dev.jsonl", [{"question": "where is paris", "answer": ["France", "FR"]}])
    # HotpotQA: one JSON array, `_id`, a lone answer string and bulky context.
    hotpot = tmp_path / "hotpot_dev_distractor_v1.json"
    hotpot.write_text(json.dumps([{"_id": "5a8b57f2", "question": "Were A and B of the same nationality?",
                                   "answer": "yes", "type": "comparison", "context": [["A", ["text"]]]}]))  # fmt: skip
    # `answers` and `target`, as other converters write them; a JSON array in a `.jsonl` file.
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps([{"id": 7, "question": "q1?", "answers": ["a1"]}, {"question": "q2?", "target": "a2"}]))
    datasets = load_eval_sets([EvalSet(path=str(p)) for p in (r1, nq, hotpot, other)])
    assert [(r.id, r.question, r.golden_answers) for r in datasets["bamboogle"]] == [
        ("bamboogle-1", "Who was president when X?", ("Lincoln",)),
        ("bamboogle-2", "Which year?", ("1861",)),
    ]
    assert [(r.id, r.golden_answers) for r in datasets["NQ-open.dev"]] == [("NQ-open.dev-1", ("France", "FR"))]
    [h] = datasets["hotpot_dev_distractor_v1"]
    assert (h.id, h.golden_answers, dict(h.extra)["type"]) == ("5a8b57f2", ("yes",), "comparison")
    assert [(r.id, r.golden_answers) for r in datasets["other"]] == [("7", ("a1",)), ("other-2", ("a2",))]
    # The ids are stable: loading again gives the same ones.
    assert [r.id for r in load_eval_set(EvalSet(path=str(r1)))["bamboogle"]] == ["bamboogle-1", "bamboogle-2"]


def test_explicit_field_mapping(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "custom.jsonl", [{"qid": "c1", "query": "q?", "gold": {"aliases": ["x", "y"]}}])
    [record] = load_eval_set(EvalSet(path=str(path), question_field="query", answers_field="gold.aliases",
                                     id_field="qid"))["custom"]  # fmt: skip
    assert (record.id, record.question, record.golden_answers) == ("c1", "q?", ("x", "y"))
    assert "query" not in dict(record.extra) and "qid" not in dict(record.extra)
    with pytest.raises(ValueError, match=r"custom\.jsonl: row 1 has no 'question'"):
        load_eval_set(EvalSet(path=str(path)))
    with pytest.raises(ValueError, match=r"custom\.jsonl: row 1 has no 'label'"):
        load_eval_set(EvalSet(path=str(path), question_field="query", answers_field="label"))
    parquet = write_parquet(tmp_path / "custom.parquet", [{"query": "pq?", "gold": ["z"], "key": "k1"}])
    [record] = load_eval_set(EvalSet(path=str(parquet), question_field="query", answers_field="gold",
                                     id_field="key"))["custom"]  # fmt: skip
    assert (record.id, record.question, record.golden_answers) == ("k1", "pq?", ("z",))


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("field", ["answer", "golden_answers"])
def test_one_rule_for_answers_in_json_lines_and_parquet(tmp_path: Path, suffix: str, field: str) -> None:
    rows = [{"question": "a?", field: " Paris "}, {"question": "b?", field: "Rome"}]
    path = tmp_path / f"same{suffix}"
    write_parquet(path, rows) if suffix == ".parquet" else write_lines(path, rows)
    assert [r.golden_answers for r in load_eval_set(EvalSet(path=str(path)))["same"]] == [("Paris",), ("Rome",)]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_a_lone_number_is_one_answer_in_every_format(tmp_path: Path, suffix: str) -> None:
    rows = [{"question": "When?", "golden_answers": 1984}]
    path = tmp_path / f"years{suffix}"
    write_parquet(path, rows) if suffix == ".parquet" else write_lines(path, rows)
    assert load_eval_set(EvalSet(path=str(path)))["years"][0].golden_answers == ("1984",)
    row = search_r1_row("When?", None)
    row["reward_model"] = {"ground_truth": {"target": 1984}, "style": "rule"}
    assert load_eval_set(EvalSet(path=str(write_parquet(tmp_path / "t.parquet", [row]))))["nq"][0].golden_answers == (
        "1984",
    )


@pytest.mark.parametrize("content", [b"", b"hello", b'{"question": "q?", "golden_answers": ["a"]}\n'])
def test_a_file_that_is_not_parquet_is_named(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: not a readable parquet file \(.+\)$"):
        load_eval_sets([EvalSet(path=str(path))])


def test_a_truncated_json_line_keeps_the_position(tmp_path: Path) -> None:
    path = tmp_path / "cut.jsonl"
    path.write_text('{"question": "q?", "golden_answers": ["a"]}\n{"question": "r?", "golden_ans\n')
    with pytest.raises(ValueError, match=r"cut.jsonl:2: not valid JSON \(Invalid control character at column 31\)"):
        load_eval_sets([EvalSet(path=str(path))])


@pytest.mark.parametrize(
    ("answer", "message"),
    [({"text": "x"}, r"row 2: 'answer' is not a string or a list of strings"),
     ([], r"row 2: 'answer' has no answer"),
     (None, r"row 2 has no golden answers")],
)  # fmt: skip
def test_bad_answer_field_names_file_row_and_field(tmp_path: Path, answer, message: str) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [{"question": "q", "answer": "a"}, {"question": "q", "answer": answer}])
    with pytest.raises(ValueError, match=rf"bad\.jsonl: {message}"):
        load_eval_sets([EvalSet(path=str(path))])


@pytest.mark.parametrize(
    ("truth", "expected"),
    [("Paris", ("Paris",)),
     ('["Paris", "City of Light"]', ("Paris", "City of Light")),
     ('{"target": ["Paris"]}', ("Paris",)),
     ('{"target": "Paris"}', ("Paris",)),
     ('"Paris"', ("Paris",)),
     ("1984", ("1984",))],
)  # fmt: skip
def test_deepresearcher_string_ground_truth(tmp_path: Path, truth: str, expected: tuple) -> None:
    # DeepResearcher writes Search-R1's layout with reward_model.ground_truth as a (JSON-encoded) string.
    row = search_r1_row("Where is the Louvre?", None)
    row["reward_model"] = {"ground_truth": truth, "style": "rule"}
    datasets = load_eval_sets([EvalSet(path=str(write_parquet(tmp_path / "dr.parquet", [row])))])
    assert datasets["nq"][0].golden_answers == expected


@pytest.mark.parametrize(
    ("reward_model", "field"),
    [({"ground_truth": '{"answer": "x"}', "style": "rule"}, "reward_model.ground_truth"),
     ({"ground_truth": "[1, {}]", "style": "rule"}, "reward_model.ground_truth"),
     ("rule", "reward_model")],
)  # fmt: skip
def test_unreadable_ground_truth_is_one_line(tmp_path: Path, reward_model, field: str) -> None:
    good = search_r1_row("fine?", None)
    # One arrow type per column: beside a string, the good row's reward_model is itself JSON-encoded.
    good["reward_model"] = {"ground_truth": "a", "style": "rule"}
    if isinstance(reward_model, str):
        good["reward_model"] = json.dumps(good["reward_model"])
    bad = search_r1_row("q?", None)
    bad["reward_model"] = reward_model
    path = write_parquet(tmp_path / "bad.parquet", [good, bad])
    with pytest.raises(ValueError, match=rf"bad\.parquet: row 2: {field} ") as info:
        load_eval_sets([EvalSet(path=str(path))])
    assert "\n" not in str(info.value)


def test_a_file_read_twice_is_parsed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lit_search_rl.data import eval_sets

    path = write_lines(tmp_path / "nq.jsonl", [{"question": "q?", "answer": "a"}])
    reads = []
    real = eval_sets._json_rows
    monkeypatch.setattr(eval_sets, "_json_rows", lambda p: reads.append(p) or real(p))
    first = load_eval_set(EvalSet(path=str(path)))
    first["nq"].clear()  # a caller's change does not reach the next caller
    assert load_eval_set(EvalSet(path=str(path)))["nq"][0].golden_answers == ("a",) and len(reads) == 1
    write_lines(path, [{"question": "q?", "answer": "b"}])  # same size, same second
    assert load_eval_set(EvalSet(path=str(path)))["nq"][0].golden_answers == ("b",) and len(reads) == 2
