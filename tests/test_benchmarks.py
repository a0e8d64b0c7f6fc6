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
    # 128 px tiles: every section runs as at the default 512, on a sixteenth of the pixels
    cmd = [sys.executable, str(SCRIPT), "--quick", "--arch", "resnet18", "--frames", "2",
           "--frame-size", "256", "--tile-size", "128", "--tiles", "8", "--device", "cpu",
           "--stack-dir", str(stacks)]
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
    assert "model FLOPs per 128 px image" in rows
    assert "2 x 256^2 uint16, 8 tiles of 128" in out.stdout
    assert (stacks / "infection_clock_bench_2x256.tif").is_file()


def test_quality_budget_without_a_finished_epoch_says_so(tmp_path):
    """The training budget stops the run; with no epoch done the script says what to change
    instead of dying with a subprocess traceback (no epoch can finish in 60 ms)."""
    script = Path(__file__).parents[1] / "benchmarks" / "quality.py"
    cmd = [sys.executable, str(script), "--small", "--budget-min", "0.001", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode != 0
    assert "no epoch finished within the 0.001 min budget" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr, out.stderr


def _quality_result(tag: str, seed: int, auc: float, mae: float, stopped: bool) -> dict:
    """A result as benchmarks/quality.py writes it, cut to what the table reads."""
    block = {"mae": mae, "slope": 0.9, "intercept": 1.5, "coverage": 0.875}
    return {"tag": tag, "args": {"seed": seed, "epochs": 4},
            "training": {"seconds": 600.0, "stopped_at_budget": stopped, "epochs_done": 4,
                         "best_epoch": 3, "images_per_s": 12.5, "load": {"mean": 11.2}},
            "summary": {"roc_auc": auc, "accuracy": 0.9, "ece_raw": 0.05, "ece_scaled": None,
                        "infected_raw": block, "infected_consistent": block,
                        "mock_raw": block, "mock_consistent": block}}


def test_quality_table_has_one_row_per_result_baseline_first(tmp_path):
    """--table turns a folder of run results into the ablation table: one row per file,
    the baseline first, a missing number as n/a and a run cut by the budget starred."""
    import json
    script = Path(__file__).parents[1] / "benchmarks" / "quality.py"
    (tmp_path / "ema_s0.json").write_text(json.dumps(_quality_result("--ema 0.999", 0, 0.97, 2.5, True)))
    (tmp_path / "baseline_s1.json").write_text(json.dumps(_quality_result("baseline", 1, 0.95, 4.25, False)))
    out = subprocess.run([sys.executable, str(script), "--table", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| option(s) | epochs (best) | seed | AUC |")
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows[2:]]
    assert [c[:4] for c in cells] == [["baseline", "4 (3)", "1", "0.950"],
                                      ["--ema 0.999", "4* (3)", "0", "0.970"]]
    assert cells[0][5] == "4.25 / 4.25" and cells[1][9] == "0.050 / n/a"


def test_quality_refuses_wells_made_with_other_settings(tmp_path):
    """--data reuses wells only when they were made with the same settings: a result row
    must never describe wells other than the ones it was measured on."""
    import json
    script = Path(__file__).parents[1] / "benchmarks" / "quality.py"
    data = tmp_path / "data"
    data.mkdir()
    (data / "done").write_text(json.dumps({"small": False, "size": 128, "frames": 96, "data_seed": 0}))
    cmd = [sys.executable, str(script), "--small", "--data", str(data), "--out", str(tmp_path / "run")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode != 0
    assert "holds wells made with" in out.stderr and "give another --data folder" in out.stderr, out.stderr


def test_open_stack_benchmark_prints_both_readers(tmp_path):
    """benchmarks/open_stack.py opens a stack in fresh viewers with both readers."""
    script = Path(__file__).parents[1] / "benchmarks" / "open_stack.py"
    cmd = [sys.executable, str(script), "--frames", "20", "--sides", "32", "--repeats", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| 20 x 32^2")]
    assert [row.split("|")[2].strip() for row in rows] == [
        "napari's reader (baseline)", "Infection Clock reader"], out.stdout
    assert rows[0].rstrip().endswith("| 1.00 |")
    assert all(_number(row.split("|")[3].strip()) > 0 for row in rows)
