"""``cv-report``: merge the held-out reports of finished CV folds into mean ± sd."""

from __future__ import annotations

from pathlib import Path

from ..core.atomic import write_atomic
from ..core.cv_summary import summarize_folds
from .options import CVReportOptions

HEADLINE = ("classification.roc_auc", "classification.accuracy", "regression.mae",
            "regression.rmse")


def cv_report(opts: CVReportOptions) -> int:
    reports = [Path(r) / "report" / "metrics.json" if Path(r).is_dir() else Path(r)
               for r in opts.runs]
    table = summarize_folds(reports)
    out = opts.out / "cv_summary.csv" if opts.out.suffix.lower() != ".csv" else opts.out
    write_atomic(out, lambda tmp: table.to_csv(tmp, index=False))
    overall = table[(table.scope == "overall") & table.metric.isin(HEADLINE)]
    for row in overall.itertuples():
        print(f"{row.metric:26s} {row.mean:.3f} ± {row.sd:.3f} ({row.n_folds} folds)")
    print(f"wrote {len(table)} rows (overall, per class, per time bin) to {out}")
    return 0
