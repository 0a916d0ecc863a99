"""Shared fixtures: a small synthetic world and a tiny model, built once per test session."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# As the entry point does, before the imports below load torch: idle OpenMP workers sleep instead of
# spinning, so tests stay fast while other processes (their own children included) share the cores.
from lit_search_rl.threads import configure_threads  # noqa: E402

configure_threads()

from lit_search_rl.data.synthetic.world import WorldConfig, generate_world, write_world  # noqa: E402
from lit_search_rl.models.tiny import TinyModelConfig, create_tiny_model  # noqa: E402

SMALL_WORLD = WorldConfig(
    seed=7,
    num_countries=3,
    num_cities=8,
    num_people=30,
    num_companies=8,
    num_films=12,
    num_bands=6,
    num_distractors=10,
    num_sft=60,
    num_train=60,
    num_val=6,
    num_test=9,
)
SMALL_MODEL = TinyModelConfig(
    vocab_size=600, hidden_size=64, num_layers=1, num_heads=1, num_kv_heads=1, intermediate_size=128
)


@pytest.fixture
def coin_reward(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reward named ``coin`` that is 1 half of the time, so a random model still gets signal groups."""
    from lit_search_rl.rewards import REWARDS

    rng = random.Random(0)
    monkeypatch.setitem(REWARDS, "coin", lambda answer, golds: float(rng.random() < 0.5))


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small world on disk."""
    out = tmp_path_factory.mktemp("world") / "world"
    write_world(generate_world(SMALL_WORLD), out)
    return out


@pytest.fixture(scope="session")
def model_dir(world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny tokenizer and model trained on the small world."""
    out = tmp_path_factory.mktemp("model") / "model"
    create_tiny_model(world_dir, out, SMALL_MODEL)
    return out


@pytest.fixture(scope="session")
def bm25_dir(world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BM25 index of the small world's corpus."""
    from lit_search_rl.retrieval.index import build_index

    out = tmp_path_factory.mktemp("bm25") / "index"
    build_index(world_dir / "corpus.jsonl", out, "bm25", progress=False)
    return out


@pytest.fixture(scope="session")
def dense_dir(world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A flat dense index (offline MiniLM) of the small world's corpus."""
    from lit_search_rl.retrieval.index import build_index

    out = tmp_path_factory.mktemp("dense") / "index"
    build_index(world_dir / "corpus.jsonl", out, "dense", progress=False)
    return out
