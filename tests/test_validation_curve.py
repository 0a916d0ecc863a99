"""ValidationCurve: one point per validation during fit, written as CSV and PNG at the end of fit."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

from lit_search_rl.callbacks.validation_curve import ValidationCurve


def _trainer(fn: str, step: int, folder: Path) -> SimpleNamespace:
    return SimpleNamespace(state=SimpleNamespace(fn=fn), global_step=step, log_dir=str(folder), logger=None)


def test_points_follow_validations_of_fit_and_land_in_the_log_folder(tmp_path: Path) -> None:
    curve, module = ValidationCurve(), SimpleNamespace(step_rollouts=32, last_evaluation=None)
    module.last_evaluation = {"chain": {"em": 0.1}, "avg": {"em": 0.2}}
    curve.on_validation_end(_trainer("fit", 0, tmp_path), module)  # the sanity check, before any step
    for step in (1, 2):
        curve.on_train_batch_end(_trainer("fit", step, tmp_path), module, None, None, step)
    curve.on_validation_end(_trainer("fit", 2, tmp_path), module)  # no new evaluation: no new point
    module.last_evaluation = {"chain": {"em": 0.3}, "avg": {"em": 0.4}}
    curve.on_validation_end(_trainer("validate", 2, tmp_path), module)  # not fit: ignored
    curve.on_validation_end(_trainer("fit", 2, tmp_path), module)
    assert [(p["step"], p["trajectories"], p["avg"]) for p in curve.points] == [(0, 0, 0.2), (2, 64, 0.4)]
    restored = ValidationCurve()
    restored.load_state_dict(curve.state_dict())
    assert restored.points == curve.points and restored.rollouts == 64
    curve.on_train_end(_trainer("fit", 2, tmp_path), module)
    rows = list(csv.DictReader((tmp_path / "validation.csv").read_text().splitlines()))
    assert [float(r["chain"]) for r in rows] == [0.1, 0.3] and (tmp_path / "validation.png").stat().st_size > 0
