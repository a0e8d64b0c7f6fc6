"""Speed benchmarks of prediction and retraining (issue 5); prints one markdown table.

All numbers come from one run on one machine, so their ratios are meaningful. Sections:

- ``baseline``: fp32 eager, batch 1, one item at a time, as a naive loop would do it;
- ``predictor``: the plugin's :class:`Predictor` at its defaults (ResNet50, 512 x 512);
- ``roof``: measured bf16 and fp32 matrix-multiply rates, the model's FLOPs (torch's flop
  counter) and the predictor's share of the compute roof;
- ``e2e``: a generated 96-frame 2048 x 2048 uint16 TIFF tiled at 512, predicted from a
  memory map in a fresh process: wall time, ratio to pure model time, peak memory;
- ``retrain``: heads-only retraining on 200 labelled tiles with a warm feature cache, and
  one full fine-tune step;
- ``compile``: the predictor with ``torch.compile`` (compile time and steady rate).

Usage::

    python benchmarks/run_benchmarks.py            # everything but compile
    python benchmarks/run_benchmarks.py --quick    # small sizes, a smoke run
    python benchmarks/run_benchmarks.py --sections predictor roof --device cuda
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from napari_infection_clock.core.checkpoint import CheckpointMeta
from napari_infection_clock.core.dataset import ItemDataset
from napari_infection_clock.core.device import select_device
from napari_infection_clock.core.feature_cache import FeatureCache
from napari_infection_clock.core.items import Item
from napari_infection_clock.core.model import ModelConfig, MultitaskResNet
from napari_infection_clock.core.predictor import Predictor
from napari_infection_clock.core.preprocess import Preprocessing, preprocess
from napari_infection_clock.core.runtime import autocast_dtype, cpu_supports_bf16, prediction_dtype
from napari_infection_clock.core.stack import open_stack
from napari_infection_clock.core.tiles import TileSpec, tile_boxes
from napari_infection_clock.core.trainer import TrainConfig, iter_train

SECTIONS = ("baseline", "predictor", "roof", "e2e", "retrain", "compile")
DEFAULT_SECTIONS = ("baseline", "predictor", "roof", "e2e", "retrain")
TILE = 512  # the predictor's default tile
STACK = "infection_clock_bench_{frames}x{size}.tif"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(DEFAULT_SECTIONS))
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--frames", type=int, help="frames of the end-to-end stack (96)")
    parser.add_argument("--frame-size", type=int, default=2048)
    parser.add_argument("--tiles", type=int, help="labelled tiles for retraining (200)")
    parser.add_argument("--tile-size", type=int, default=TILE,
                        help=f"tile and model input size in px ({TILE}, the predictor's default)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="batch size of the predictor and end-to-end sections (its default)")
    parser.add_argument("--prefetch", type=int, default=None,
                        help="end-to-end reader-thread depth in batches (predictor default)")
    parser.add_argument("--stack-dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the generated stack is written and kept (the temp folder); "
                             "made if it does not exist")
    parser.add_argument("--e2e-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if {"e2e", "retrain"} & set(args.sections) and not args.e2e_worker:
        try:
            args.stack_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            parser.error(f"--stack-dir {args.stack_dir} cannot be made ({exc.strerror}); "
                         "give a folder that exists or can be created")
    if args.e2e_worker:
        print(json.dumps(_e2e_worker(args, Path(args.e2e_worker))))
        return

    device = select_device(args.device)
    frames = args.frames or (8 if args.quick else 96)
    n_tiles = args.tiles or (40 if args.quick else 200)
    torch.manual_seed(0)
    model, meta = _model(args.arch, args.tile_size)
    rows: list[tuple[str, str, str]] = []
    results: dict[str, float] = {}
    started = time.perf_counter()
    print(_machine(device), flush=True)

    if "baseline" in args.sections:
        results["baseline"] = _baseline(model, meta, device, 1 if args.quick else 8)
        rows.append(("baseline: fp32 eager, batch 1, item by item", f"{results['baseline']:.2f} img/s", ""))
    sizes = {"batch_size": args.batch_size} if args.batch_size else {}
    predictor = Predictor(model, meta, device=device, **sizes)
    if "predictor" in args.sections or "roof" in args.sections:
        reps = 1 if args.quick else max(2, 32 // predictor.batch_size)
        results["predictor"] = _predictor_rate(predictor, reps)
        precision = str(predictor.amp_dtype).replace("torch.", "") if predictor.amp_dtype else "fp32"
        which = "predictor" if args.batch_size else "predictor defaults"
        rows.append((f"{which} (batch {predictor.batch_size}, {precision}, channels-last, BN folded)",
                     f"{results['predictor']:.2f} img/s", ""))
        if "baseline" in results:
            ratio = results["predictor"] / results["baseline"]
            rows.append(("predictor / baseline", f"{ratio:.1f}x", _target(ratio >= 6, ">= 6x")))
        if predictor.amp_dtype is not torch.bfloat16 and autocast_dtype(device, "auto") is not None:
            # What the accurate default costs: bf16 moves times by 0.3-1.0 h (runtime.py).
            bf16_rate = _predictor_rate(Predictor(model, meta, device=device, precision="bf16",
                                                  **sizes), reps)
            rows += [(f"predictor at bf16, opt-in (batch {predictor.batch_size})",
                      f"{bf16_rate:.2f} img/s", ""),
                     ("bf16 / default: the speed the accurate default gives up",
                      f"{bf16_rate / results['predictor']:.2f}x", "")]
        if predictor.amp_dtype is not None:
            reference = _autocast_rate(model, meta, device, predictor.amp_dtype,
                                       predictor.batch_size, reps)
            rows.append((f"reference: the model as built, channels-last + {precision} autocast "
                         f"(batch {predictor.batch_size})", f"{reference:.2f} img/s", ""))
    if "roof" in args.sections:
        # Without bf16 kernels a bf16 matrix product is emulated: minutes, and no roof.
        native_bf16 = device.type != "cpu" or cpu_supports_bf16()
        bf16 = _matmul_rate(device, torch.bfloat16, args.quick) if native_bf16 else None
        fp32 = _matmul_rate(device, torch.float32, args.quick)
        flops = _model_flops(model, meta)
        rate = bf16 if predictor.amp_dtype in (torch.bfloat16, torch.float16) else fp32
        roof = rate / flops
        share = results["predictor"] / roof
        goal = 0.6 if device.type == "cpu" else 0.4
        rows += [
            ("matmul rate bf16 / fp32",
             f"{f'{bf16 / 1e9:.0f}' if bf16 else 'no bf16 kernels'} / {fp32 / 1e9:.0f} GFLOP/s", ""),
            (f"model FLOPs per {meta.preprocessing.image_size} px image", f"{flops / 1e9:.1f} GFLOP", ""),
            ("compute roof (matmul rate / FLOPs)", f"{roof:.1f} img/s", ""),
            ("predictor share of the roof", f"{share:.0%}", _target(share >= goal, f">= {goal:.0%}")),
        ]
    if "e2e" in args.sections:
        path = _write_stack(args.stack_dir, frames, args.frame_size)
        e2e = _run_worker(args, path)
        n = e2e["items"]
        ratio = e2e["wall_s"] / e2e["model_s"]
        rows += [
            (f"end to end: {frames} x {args.frame_size}^2 uint16, {n} tiles of {args.tile_size} "
             f"(batch {e2e['batch']}, prefetch {e2e['prefetch']}, {e2e['threads']} torch threads)",
             f"{e2e['wall_s']:.1f} s ({n / e2e['wall_s']:.2f} img/s)", ""),
            ("pure model time for the same tiles (model-only batches timed before and after)",
             f"{e2e['model_s']:.1f} s", ""),
            ("end to end / pure model", f"{ratio:.2f}x", _target(ratio <= 1.2, "<= 1.2x")),
            ("peak resident memory (VmHWM), whole run", f"{e2e['peak_rss_mb']:.0f} MB",
             _target(e2e["peak_rss_mb"] <= 1536, "<= 1.5 GB")),
        ]
        counts = sorted(e2e["peak_after"], key=int)
        for count in counts:
            rows.append((f"  peak after the first {count} frames",
                         f"{e2e['peak_after'][count]:.0f} MB", ""))
        growth = e2e["peak_after"][counts[-1]] - e2e["peak_after"][counts[0]]
        rows += [
            (f"  growth of the peak from {counts[0]} to {counts[-1]} frames", f"{growth:+.0f} MB",
             _target(growth <= 16, "does not grow (<= 16 MB)")),
            ("  resident between frames, largest: anonymous / file-mapped",
             f"{e2e['peak_anon_mb']:.0f} / {e2e['peak_file_mb']:.0f} MB", ""),
        ]
    if "retrain" in args.sections:
        path = _write_stack(args.stack_dir, frames, args.frame_size)
        cold, warm, hits, step = _retrain(model, meta, device, path, n_tiles, args.quick)
        rows += [
            (f"feature cache, cold: {n_tiles} tiles through the backbone", f"{cold:.1f} s", ""),
            (f"heads-only retraining, warm cache ({n_tiles} tiles, 10 epochs)", f"{warm:.2f} s "
             f"({hits} hits)", _target(warm <= 3, "<= 3 s")),
            (f"one full fine-tune step (batch {step[1]}, fp32 autograd)", f"{step[0]:.1f} s", ""),
        ]
    if "compile" in args.sections:
        first, rate = _compiled_rate(model, meta, device, predictor.batch_size,
                                     1 if args.quick else 8)
        rows += [
            ("torch.compile: first batch (compiling)", f"{first:.0f} s", ""),
            ("torch.compile: steady rate", f"{rate:.2f} img/s", ""),
        ]
        if "predictor" in results:
            rows.append(("compiled / eager predictor", f"{rate / results['predictor']:.2f}x", ""))

    print("\n| measure | result | target |\n| --- | --- | --- |")
    for name, value, target in rows:
        print(f"| {name} | {value} | {target} |")
    print(f"\ntotal benchmark time {time.perf_counter() - started:.0f} s; load average at the "
          f"end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def _model(arch: str, tile: int):
    config = ModelConfig(arch=arch)
    model = MultitaskResNet(config).eval()
    return model, CheckpointMeta(model=config, preprocessing=Preprocessing(image_size=tile))


def _raw_tiles(n: int, tile: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, size=(n, tile, tile), dtype=np.uint16)


def _best_rate(step, items: int, calls: int, device, rounds: int = 3) -> float:
    """Best images/s over ``rounds`` rounds of ``calls`` calls, after one warm-up call.

    Every rate row is measured this way, so a burst of load on a shared machine lowers
    one round, not the ratio between rows.
    """
    step()  # warm-up: oneDNN / cuDNN pick their kernels
    best = 0.0
    for _ in range(rounds):
        _sync(device)
        start = time.perf_counter()
        for _ in range(calls):
            step()
        _sync(device)
        best = max(best, calls * items / (time.perf_counter() - start))
    return best


def _baseline(model, meta, device, calls: int) -> float:
    """What a first attempt does: fp32, default layout, one crop per forward pass."""
    model = model.to(device).to(memory_format=torch.contiguous_format).eval()
    crop = _raw_tiles(1, meta.preprocessing.image_size)[0]

    def step():
        with torch.no_grad():
            x = preprocess(torch.from_numpy(crop)[None].to(device), meta.preprocessing)
            logits, t = model(x)
            float(torch.softmax(logits, 1)[0, 1]), float(t[0])

    return _best_rate(step, 1, calls, device)


def _predictor_rate(predictor: Predictor, calls: int) -> float:
    crops = _raw_tiles(predictor.batch_size, predictor.meta.preprocessing.image_size)
    return _best_rate(lambda: predictor.predict_crops(crops), len(crops), calls, predictor.device)


def _autocast_rate(model, meta, device, dtype, batch: int, calls: int) -> float:
    """The textbook fast path without the predictor's extras (no BatchNorm folding)."""
    model = model.to(device).to(memory_format=torch.channels_last).eval()
    x = preprocess(torch.from_numpy(_raw_tiles(batch, meta.preprocessing.image_size)).to(device),
                   meta.preprocessing)
    x = x.contiguous(memory_format=torch.channels_last)

    def step():
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype):
            model(x)

    return _best_rate(step, batch, calls, device)


def _matmul_rate(device, dtype, quick: bool = False, reps: int = 5) -> float:
    """Best FLOP/s of an n x n matrix product (n large enough to fill a GPU; a quarter of
    that with ``quick``: 64 times less work, the rate of a smoke run)."""
    n = (8192 if device.type == "cuda" else 4096) // (4 if quick else 1)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = 0.0
    for _ in range(reps + 1):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def _model_flops(model, meta) -> float:
    size = meta.preprocessing.image_size
    x = torch.zeros(1, 3, size, size)
    model = model.cpu()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return float(counter.get_total_flops())


def _write_stack(folder: Path, frames: int, size: int) -> Path:
    """A memory-mappable uint16 TIFF with camera-like content, written frame by frame."""
    path = folder / STACK.format(frames=frames, size=size)
    if path.exists():
        return path
    import tifffile

    tmp = path.with_suffix(".tmp.tif")
    out = tifffile.memmap(tmp, shape=(frames, size, size), dtype=np.uint16,
                          imagej=True, metadata={"axes": "TYX", "finterval": 1800.0})
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = 1500 + 400 * np.sin(7 * xx) * np.cos(5 * yy)
    for t in range(frames):
        noise = rng.integers(0, 300, size=(size, size), dtype=np.uint16)
        out[t] = (base + 10 * t).astype(np.uint16) + noise
    out.flush()
    del out
    os.replace(tmp, path)
    return path


def _run_worker(args, path: Path) -> dict:
    """The end-to-end run in a fresh process, so its peak memory is its own."""
    cmd = [sys.executable, __file__, "--e2e-worker", str(path), "--device", args.device,
           "--arch", args.arch, "--tile-size", str(args.tile_size)] + [
        arg for name in ("prefetch", "batch_size") if getattr(args, name) is not None
        for arg in (f"--{name.replace('_', '-')}", str(getattr(args, name)))]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _memory_mb() -> dict[str, float]:
    """VmHWM (peak so far), RssAnon and RssFile of this process in MB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "RssAnon", "RssFile"):
                out[key] = float(value.split()[0]) / 1024
    return out


def _e2e_worker(args, path: Path) -> dict:
    device = select_device(args.device)
    torch.manual_seed(0)
    model, meta = _model(args.arch, args.tile_size)
    extra = {k: v for k, v in (("prefetch", args.prefetch), ("batch_size", args.batch_size))
             if v is not None}
    predictor = Predictor(model, meta, device=device, **extra)
    del model  # as `infection-clock predict` does: only the network that runs is kept
    anon = file = 0.0
    # Pure model time: preprocessed batches of the same size through the model only,
    # timed right before and right after the run (the machine's speed may drift).
    tile = meta.preprocessing.image_size
    x = preprocess(torch.from_numpy(_raw_tiles(predictor.batch_size, tile)).to(device),
                   meta.preprocessing)
    x = x.contiguous(memory_format=torch.channels_last)
    predictor._run(x)

    def model_only(batches: int = 4) -> float:
        start = time.perf_counter()
        for _ in range(batches):
            predictor._run(x)
        return (time.perf_counter() - start) / (batches * len(x))

    before = model_only()
    with open_stack(path) as stack:
        boxes, _ = tile_boxes(*stack.frame_shape, TileSpec(tile_size=tile))
        items = stack.n_frames * len(boxes)
        # The peak of a run of the first k frames is VmHWM once they are done.
        n = stack.n_frames
        counts = {max(1, n // 4), max(1, n // 2), n}
        peak_after = {}
        start = time.perf_counter()
        for done, _ in enumerate(predictor.iter_stack(stack, tiles=TileSpec(tile_size=tile)), 1):
            memory = _memory_mb()
            anon, file = max(anon, memory["RssAnon"]), max(file, memory["RssFile"])
            if done in counts:
                peak_after[done] = memory["VmHWM"]
        wall = time.perf_counter() - start
    per_item = (before + model_only()) / 2
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"items": items, "wall_s": wall, "model_s": per_item * items, "peak_rss_mb": peak,
            "peak_after": peak_after, "peak_anon_mb": anon, "peak_file_mb": file,
            "threads": torch.get_num_threads(), "prefetch": predictor.prefetch,
            "batch": predictor.batch_size}


def _retrain(model, meta, device, path: Path, n_tiles: int, quick: bool):
    """Cold cache fill, warm heads-only retraining, and one full fine-tune step."""
    with open_stack(path) as stack:
        boxes, _ = tile_boxes(*stack.frame_shape,
                              TileSpec(tile_size=meta.preprocessing.image_size))
        n_frames = stack.n_frames
    rng = np.random.default_rng(0)
    items = []
    for k in range(n_tiles):
        frame, box = (k // len(boxes)) % n_frames, tuple(int(v) for v in boxes[k % len(boxes)])
        label = int(rng.integers(0, 2))
        items.append(Item(str(path), frame, box, label, frame * 0.5, float(rng.uniform(0, 48)), "g"))
    prep = meta.preprocessing
    cache = FeatureCache()
    amp = prediction_dtype(device, "auto")  # what heads-only training keys on
    model = model.to(device)
    start = time.perf_counter()
    cache.features(model.backbone, ItemDataset(items, prep), device, amp, batch_size=8)
    cold = time.perf_counter() - start
    config = TrainConfig(epochs=10, batch_size=32, lr=1e-3, mode="heads", device=str(device))
    start = time.perf_counter()
    for _ in iter_train(model, ItemDataset(items, prep), None, config, meta, feature_cache=cache):
        pass
    warm = time.perf_counter() - start
    hits = cache.hits
    batch = 4 if quick else 8
    full = TrainConfig(epochs=1, batch_size=batch, mode="full", augment=False, device=str(device))
    run = iter_train(model, ItemDataset(items[:batch], prep), None, full, meta)
    start = time.perf_counter()
    for event in run:
        if event.stage == "batch":
            break
    step = time.perf_counter() - start
    run.close()
    return cold, warm, hits, (step, batch)


def _compiled_rate(model, meta, device, batch: int, calls: int) -> tuple[float, float]:
    predictor = Predictor(model, meta, device=device, batch_size=batch, compile=True)
    crops = _raw_tiles(predictor.batch_size, meta.preprocessing.image_size)
    start = time.perf_counter()
    predictor.predict_crops(crops)
    first = time.perf_counter() - start
    return first, _best_rate(lambda: predictor.predict_crops(crops), len(crops), calls, device)


def _machine(device) -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none used"
    return (
        f"date {dt.datetime.now().isoformat(timespec='minutes')}; device {device}; CPU {cpu}, "
        f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads, bf16 kernels "
        f"{cpu_supports_bf16()}; GPU {gpu}; torch {torch.__version__}; python "
        f"{platform.python_version()}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )


def _target(met: bool, text: str) -> str:
    return f"{text}: {'met' if met else 'NOT met'}"


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
