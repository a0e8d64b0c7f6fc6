"""The benchmark script keeps working: a small run prints every row of its table.

Only that the numbers exist and make sense is checked, never how fast anything was.
"""

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "run_benchmarks.py"


def _rows(output: str) -> dict[str, str]:
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 3 and cells[0] not in ("measure", "---"):
            rows[cells[0]] = cells[1]
    return rows


def _number(text: str) -> float:
    return float(re.match(r"[\d.]+", text).group())


def test_small_benchmark_run_prints_the_whole_table(tmp_path):
    stacks = tmp_path / "not" / "yet"  # --stack-dir need not exist: it is made
    cmd = [sys.executable, str(SCRIPT), "--quick", "--arch", "resnet18", "--frames", "2",
           "--frame-size", "1024", "--tiles", "8", "--device", "cpu", "--stack-dir", str(stacks)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = _rows(out.stdout)
    by_start = {name.split(":")[0].split(" (")[0]: value for name, value in rows.items()}
    for name in ("baseline", "predictor defaults", "predictor / baseline", "matmul rate bf16 / fp32",
                 "compute roof", "predictor share of the roof", "end to end",
                 "end to end / pure model", "peak resident memory",
                 "peak after the first 1 frames", "peak after the first 2 frames",
                 "growth of the peak from 1 to 2 frames",
                 "feature cache, cold",
                 "heads-only retraining, warm cache", "one full fine-tune step"):
        assert name in by_start, f"row {name!r} missing from:\n{out.stdout}"
    assert _number(by_start["baseline"]) > 0 and _number(by_start["predictor defaults"]) > 0
    assert "(8 hits)" in by_start["heads-only retraining, warm cache"]
    assert "2 x 1024^2 uint16, 8 tiles of 512" in out.stdout
    assert (stacks / "infection_clock_bench_2x1024.tif").is_file()


def test_quality_budget_without_a_finished_epoch_says_so(tmp_path):
    """The training budget stops the run; with no epoch done the script says what to change
    instead of dying with a subprocess traceback (no epoch can finish in 60 ms)."""
    script = Path(__file__).parents[1] / "benchmarks" / "quality.py"
    cmd = [sys.executable, str(script), "--small", "--budget-min", "0.001", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode != 0
    assert "no epoch finished within the 0.001 min budget" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
