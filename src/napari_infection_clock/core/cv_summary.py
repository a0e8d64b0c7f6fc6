"""Cross-validation: the fold reports of one CV merged into mean ± sd per metric.

Each fold is an independent ``train --folds K --fold i`` job that writes its held-out
report (``report/metrics.json``). The summary has one row per scope (overall, each class,
each time bin) and metric, with the mean, the sample standard deviation (ddof=1) and each
fold's value, as the research pipeline reports its 5-fold results.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


def _numbers(block: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested metrics block as ``a.b`` names (curves and lists left out)."""
    out = {}
    for key, value in block.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_numbers(value, f"{name}."))
        elif isinstance(value, bool) or value is None:
            if value is None:
                out[name] = np.nan
        elif isinstance(value, (int, float)):
            out[name] = float(value)
    return out


def fold_rows(metrics: dict) -> dict[tuple[str, str], float]:
    """(scope, metric) -> value for one fold's metrics.json."""
    rows = {}
    for name, value in _numbers(metrics["overall"]).items():
        rows["overall", name] = value
    for cls, block in metrics.get("per_class", {}).items():
        for name, value in _numbers(block).items():
            rows[f"class {cls}", name] = value
    for row in metrics.get("per_bin", []):
        scope = f"bin {row['bin_start_h']:g}-{row['bin_end_h']:g} h"
        for name, value in _numbers(row).items():
            if name not in ("bin_start_h", "bin_end_h"):
                rows[scope, name] = value
    return rows


def summarize_folds(reports: list[Path]) -> pd.DataFrame:
    """One row per (scope, metric): mean, sd, folds with a value, then each fold's value."""
    if len(reports) < 2:
        raise ValueError("a cross-validation summary needs the reports of at least 2 folds")
    folds = []
    for path in reports:
        try:
            folds.append(fold_rows(json.loads(Path(path).read_text())))
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"no fold report at '{path}': did that fold's job finish?") from exc
    keys = list(dict.fromkeys(k for fold in folds for k in fold))
    values = np.array([[fold.get(k, np.nan) for fold in folds] for k in keys], dtype=np.float64)
    finite = np.isfinite(values)
    n = finite.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        total = np.where(finite, values, 0).sum(1)
        mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
        sq = np.where(finite, (values - mean[:, None]) ** 2, 0).sum(1)
        sd = np.where(n > 1, np.sqrt(sq / np.maximum(n - 1, 1)), np.nan)
    table = pd.DataFrame({"scope": [k[0] for k in keys], "metric": [k[1] for k in keys],
                          "mean": mean, "sd": sd, "n_folds": n})
    for i in range(len(folds)):
        table[f"fold_{i}"] = values[:, i]
    return table
