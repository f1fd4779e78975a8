"""Reports are frozen dataclasses (issue 15, item 3): fields as attributes, ``to_dict()`` /
JSON with the field names the dicts had."""

import dataclasses
import json

import numpy as np
import pytest

from stacchip_core.pipeline.runner import RunReport, RunSummary, TaskResult, run_tasks
from stacchip_core.training.bandstats import BandStats, band_stats, dump


def _square_or_fail(index: int) -> int:
    if index == 2:
        raise ValueError("no square for https://user:pw@127.0.0.1/x?X-Amz-Signature=abc")
    return index * index


def test_run_report_is_frozen_and_its_json_keeps_the_field_names():
    report = run_tasks(_square_or_fail, [3, 2, 1], scheduler="sync", command="squares")
    assert (
        isinstance(report, RunReport) and report.command == "squares" and report.scheduler == "sync"
    )
    assert [(t.index, t.status, t.result) for t in report.tasks] == [
        (1, "done", 1),
        (2, "failed", None),
        (3, "done", 9),
    ]
    assert report.failed == [report.tasks[1]]
    assert report.tasks[1].error == "ValueError: no square for https://REDACTED@127.0.0.1/x?X-Amz-Signature=REDACTED"
    assert report.summary() == RunSummary(tasks=3, done=2, failed=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.seconds = 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.tasks[0].status = "failed"
    data = json.loads(report.to_json())
    assert set(data) == {"command", "scheduler", "started", "seconds", "tasks", "summary"}
    assert data["summary"] == {"tasks": 3, "done": 2, "failed": 1}
    assert data["tasks"][2] == {"index": 3, "status": "done", "result": 9, "error": None,
                                "seconds": report.tasks[2].seconds}


def test_a_task_result_holding_a_report_serialises_nested():
    inner = RunSummary(1, 1, 0)
    report = RunReport(
        "c", "sync", "2024-01-01T00:00:00+00:00", 1.0, [TaskResult(0, "done", [inner])]
    )
    assert report.to_dict()["tasks"][0]["result"] == [{"tasks": 1, "done": 1, "failed": 0}]
    assert report["command"] == "c"  # item access by field name, as when reports were dicts
    with pytest.raises(KeyError):
        report["nope"]


def test_band_stats_are_dataclasses_and_dump_writes_plain_json(tmp_path):
    pixels = np.arange(2 * 2 * 2 * 2, dtype="uint16").reshape(2, 2, 2, 2)  # 2 chips, 2 bands, 2 x 2
    np.savez(tmp_path / "cube_0.npz", platform="p", bands=["red", "nir"], pixels=pixels)
    stats = band_stats(tmp_path, workers=1)
    red = pixels[:, 0].astype(float).ravel()  # 0 1 2 3 8 9 10 11
    assert stats["p"]["red"] == BandStats(8, red.mean(), red.std())
    assert stats["p"]["red"].mean == 5.5
    dump(stats, tmp_path / "stats.json")
    assert json.loads((tmp_path / "stats.json").read_text())["p"]["red"] == {
        "count": 8,
        "mean": 5.5,
        "std": red.std(),
    }
