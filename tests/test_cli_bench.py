"""`sslfast bench` (benchmarks/run.py): running the scripts, the RESULTS.md table, the plots."""
import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import run as runner  # noqa: E402
from common import Results, Row  # noqa: E402


def _results(folder):
    results = Results("fake_op", torch.device("cpu"))
    for shape, eager, fused in (("N=256", 4.0, 1.0), ("N=1024", 30.0, 6.0)):
        results.add(Row("loss", "torch-eager", "fwd+bwd", shape, "float32", "time_ms", eager, eager * 0.9, eager * 1.1))
        results.add(Row("loss", "sslfast-reference", "fwd+bwd", shape, "float32", "time_ms", fused))
    results.add(Row("loader", "torchvision", "-", "224px", "uint8", "images_per_s", 300.0))
    results.add(Row("loader", "sslfast-dali-cpu", "-", "224px", "uint8", "images_per_s", 600.0))
    return results.save(str(folder))


def test_table_ratios_and_markers_keep_hand_written_sections(tmp_path):
    results_dir = tmp_path / "results"
    _results(results_dir)
    markdown = tmp_path / "RESULTS.md"
    markdown.write_text("# Benchmark results\n\n## Loader (hand-written)\n\nDALI CPU is 2x.\n")
    assert runner.main(["--no-run", "--results", str(results_dir), "--markdown", str(markdown)]) == 0
    text = markdown.read_text()
    assert text.startswith("# Benchmark results\n\n## Loader (hand-written)\n\nDALI CPU is 2x.\n")
    assert text.count(runner.BEGIN) == 1 and text.count(runner.END) == 1
    assert "| loss | fwd+bwd | N=256 | float32 | time_ms | 4 | 1 | 4.00x |" in text
    assert "| loss | fwd+bwd | N=1024 | float32 | time_ms | 30 | 6 | 5.00x |" in text
    assert "| loader | - | 224px | uint8 | images_per_s | 300 | 600 | 2.00x |" in text  # higher is better
    assert (results_dir / "plots" / "fake_op-cpu.png").stat().st_size > 0

    markdown.write_text(text + "\n## Crosscorr (hand-written, after the table)\n")
    assert runner.main(["--no-run", "--results", str(results_dir), "--markdown", str(markdown)]) == 0
    again = markdown.read_text()
    assert again.count(runner.BEGIN) == 1 and again.endswith("## Crosscorr (hand-written, after the table)\n")


def test_runner_reports_failing_scripts_and_goes_on(tmp_path, monkeypatch):
    bench_dir = tmp_path / "benchmarks"
    bench_dir.mkdir()
    (bench_dir / "bench_ok.py").write_text("print('fine')\n")
    (bench_dir / "bench_broken.py").write_text("raise SystemExit(3)\n")
    monkeypatch.setattr(runner, "HERE", str(bench_dir))
    assert [os.path.basename(s) for s in runner.bench_scripts()] == ["bench_broken.py", "bench_ok.py"]
    status = runner.run_scripts(runner.bench_scripts(), timeout=120, log=lambda m: None)
    assert status == {"bench_broken.py": "failed (exit code 3)", "bench_ok.py": "ok"}
    assert [os.path.basename(s) for s in runner.bench_scripts(["_ok"])] == ["bench_ok.py"]


def test_unreadable_results_are_ignored(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "empty.json").write_text(json.dumps({"benchmark": "x", "rows": []}))
    assert runner.load_results(str(tmp_path)) == []


@pytest.mark.parametrize("metric,values,expected", [
    ("time_ms", {"sslfast-triton": 2.0, "sslfast-reference": 8.0, "torch-eager": 6.0, "lightly": 10.0}, 3.0),
    ("peak_bytes", {"sslfast-reference": 100.0, "torch-eager": 400.0}, 4.0),
    ("images_per_s", {"sslfast": 900.0, "torchvision-eager": 300.0}, 3.0),
    ("time_ms", {"torch-eager": 1.0}, None),
])
def test_sslfast_vs_best_other(metric, values, expected):
    assert runner.sslfast_vs_best_other(metric, values) == expected
