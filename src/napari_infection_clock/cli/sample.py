"""``sample``: the synthetic research-layout dataset."""

from __future__ import annotations

from ..core.synthetic import write_research_dataset
from .options import SampleOptions


def sample(opts: SampleOptions) -> int:
    paths = write_research_dataset(
        opts.out,
        n_infected=opts.n_infected,
        n_mock=opts.n_mock,
        n_frames=opts.frames,
        size=opts.size,
        frame_interval_h=opts.interval,
        onset_h=opts.onset,
        seed=opts.seed,
    )
    print(f"wrote {len(paths)} stacks to {opts.out}")
    return 0
