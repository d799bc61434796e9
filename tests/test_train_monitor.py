"""The run's CSV logs: rows and growing columns round-trip, appends stay O(row), resume trims."""
import csv
import os

from sslfast.train.monitor import CSVLog


def _read(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_csv_log_appends_without_rewriting_and_grows_columns(tmp_path, monkeypatch):
    path = str(tmp_path / "steps.csv")
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (replaced.append(b), real_replace(a, b)))
    log = CSVLog(path)
    for step in range(1, 201):
        log.append({"step": step, "loss": 1.0 / step})
    # one rewrite for the header; every later row with known columns is appended in place,
    # so a long run costs O(rows) file writes, not O(rows^2)
    assert len(replaced) == 1
    log.append({"step": 201, "loss": 0.5, "knn_top1": 0.25})  # a new column: one rewrite
    assert len(replaced) == 2
    rows = _read(path)
    assert len(rows) == 201 and rows[0] == {"step": "1", "loss": "1.0", "knn_top1": ""}
    assert rows[-1] == {"step": "201", "loss": "0.5", "knn_top1": "0.25"}
    log.append({"step": 202, "loss": 0.25})
    assert _read(path)[-1] == {"step": "202", "loss": "0.25", "knn_top1": ""} and len(replaced) == 2


def test_csv_log_resume_keeps_rows_up_to_the_step_and_skips_a_torn_last_line(tmp_path):
    path = str(tmp_path / "steps.csv")
    log = CSVLog(path)
    for step in range(1, 6):
        log.append({"step": step, "loss": float(step)})
    with open(path, "a") as fh:
        fh.write("6,")  # a kill in the middle of an append
    resumed = CSVLog(path, keep_up_to_step=3)
    assert [r["step"] for r in resumed.rows] == ["1", "2", "3"]
    resumed.append({"step": 4, "loss": 9.0})
    assert [r["step"] for r in _read(path)] == ["1", "2", "3", "4"]
