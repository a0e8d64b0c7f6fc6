"""File > Open of a time-lapse: how long napari's GUI thread is held, with the plugin's reader
and with napari's own reader (the baseline), in the same run; prints one markdown table.

Each opening runs in a fresh process, as a user's first File > Open does: a shown viewer,
then ``viewer.open(path, plugin=...)``, the call File > Open makes. Reported per stack and
reader (median of the repeats): the open call's time (the GUI thread is held for all of
it), the longest stall in the 2 s after it (gui_stalls' 20 ms timer, settled half a second
more: first paint, what the open left to do), the time of one slider step over the next
19 frames (and their paints), and the open's ratio to napari's reader. napari's reader reads the whole file at once; the plugin's reads a frame
when the slider reaches it.

Usage (a display is needed)::

    xvfb-run -a python benchmarks/open_stack.py [--frames 95] [--sides 512 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

READERS = {"napari's reader (baseline)": "napari", "Infection Clock reader": "napari-infection-clock"}

#: Run in a fresh interpreter: argv[1] the file, argv[2] the reader plugin, argv[3] this
#: folder (for gui_stalls' StallMeter); prints JSON.
ONE_OPENING = r"""
import json, os, sys, time
import napari
from qtpy.QtWidgets import QApplication

path, plugin = sys.argv[1], sys.argv[2]
sys.path.insert(0, sys.argv[3])
from gui_stalls import StallMeter

viewer = napari.Viewer(show=True)
app = QApplication.instance()
end = time.perf_counter() + 1.0
while time.perf_counter() < end:  # the window shown and settled, as before a click
    app.processEvents(); time.sleep(0.01)
t0 = time.perf_counter()
viewer.open(path, plugin=plugin)
opened = time.perf_counter() - t0
end = time.perf_counter() + 2.0
after = StallMeter().measure(app, lambda: None, lambda: time.perf_counter() > end).max()
steps = range(1, min(20, viewer.layers[-1].data.shape[0]))
t1 = time.perf_counter()
for step in steps:
    viewer.dims.set_current_step(0, step); app.processEvents()
per_step = (time.perf_counter() - t1) / max(1, len(steps))
print(json.dumps({"open": opened, "after": after / 1000, "step": per_step}), flush=True)
os._exit(0)  # measured; Qt's teardown at exit is not what is measured here
"""


def _parse():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=95, help="frames per stack")
    parser.add_argument("--sides", type=int, nargs="+", default=[512, 1024],
                        help="frame sides (px), one uint16 stack each")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per cell")
    return parser.parse_args()


def _write(folder: Path, frames: int, side: int) -> Path:
    from napari_infection_clock.core.stack import write_stack

    rng = np.random.default_rng(side)
    data = rng.integers(0, 4000, (frames, side, side), dtype=np.uint16)
    return write_stack(folder / f"well_{side}px.tif", data, axes="TYX", frame_interval_h=0.5)


def _open_once(path: Path, plugin: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", ONE_OPENING, str(path), plugin,
                           str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"opening {path.name} with {plugin} failed (exit status "
                         f"{proc.returncode}):\n{proc.stdout[-500:]}{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    args = _parse()
    folder = Path(tempfile.mkdtemp(prefix="open_stack_"))
    rows = []
    for side in args.sides:
        path = _write(folder, args.frames, side)
        size_mb = path.stat().st_size / 1e6
        medians = {}
        for name, plugin in READERS.items():  # alternating would not help: each is fresh
            runs = [_open_once(path, plugin) for _ in range(args.repeats)]
            medians[name] = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
            opens = ", ".join(f"{r['open'] * 1000:.0f}" for r in runs)
            print(f"  {side} px, {name}: open {opens} ms", flush=True)
        base = medians[next(iter(READERS))]["open"]
        for name, m in medians.items():
            rows.append((f"{args.frames} x {side}^2 uint16 ({size_mb:.0f} MB)", name, m,
                         m["open"] / base))
    print(f"\nFile > Open in a fresh viewer (median of {args.repeats} processes)\n")
    print("| stack | reader | open (GUI thread held) | longest stall after | "
          "slider step | open / napari's reader |")
    print("| --- | --- | --- | --- | --- | --- |")
    for stack, name, m, ratio in rows:
        print(f"| {stack} | {name} | {m['open'] * 1000:.0f} ms | {m['after'] * 1000:.0f} ms | "
              f"{m['step'] * 1000:.1f} ms | {ratio:.2f} |")


if __name__ == "__main__":
    main()
