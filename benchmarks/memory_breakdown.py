"""Where the end-to-end prediction's peak resident memory comes from, stage by stage.

Each stage runs with the kernel's peak counter reset (``/proc/self/clear_refs``, Linux),
so "peak" is the stage's own high-water mark (VmHWM) and "after" what stays resident
(VmRSS, split into anonymous and file-mapped pages). Parts that live inside one stage
are measured there: the CUDA libraries mapped by ``import torch`` (their pages and the
anonymous memory placed right after them), the model's fp32 and folded bf16 weights,
the autocast cache, the forward pass's transient memory (activations and oneDNN
scratch, with torch's own tensor peak from its profiler), the memory-mapped TIFF's
resident pages and the result tables kept by the caller. The stack run resets the peak
before every frame, so the per-frame peaks show whether memory grows with the frames.

Usage (Linux only; the stack is the end-to-end benchmark's)::

    python benchmarks/memory_breakdown.py /tmp/infection_clock_bench_96x2048.tif
    python benchmarks/memory_breakdown.py STACK --frames 24 --arch resnet18
"""

from __future__ import annotations

import argparse
import sys
import time

T0 = time.perf_counter()


def _status() -> dict[str, float]:
    """VmHWM, VmRSS, RssAnon and RssFile of this process in MB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = float(value.split()[0]) / 1024
    return out


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current VmRSS


ROWS: list[tuple[str, str, str, str, str]] = []
PEAKS: list[float] = []


def _row(stage: str, note: str = "") -> None:
    s = _status()
    PEAKS.append(s["VmHWM"])
    ROWS.append((stage, f"{s['VmHWM']:.0f}", f"{s['VmRSS']:.0f}",
                 f"{s['RssAnon']:.0f} / {s['RssFile']:.0f}", note))
    print(f"{stage}: peak {s['VmHWM']:.0f} MB, after {s['VmRSS']:.0f} MB, "
          f"anon {s['RssAnon']:.0f} / file {s['RssFile']:.0f} MB {note}",
          file=sys.stderr, flush=True)
    _reset_peak()


def _mappings(match) -> tuple[float, float]:
    """Resident MB of file mappings whose path satisfies ``match``, and of the anonymous
    mappings that directly follow them (their .bss and heap-like data)."""
    files = anon = 0.0
    owner, end = None, None
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if parts and not parts[0].endswith(":"):
                start, stop = (int(v, 16) for v in parts[0].split("-"))
                path = parts[5] if len(parts) > 5 else ""
                if path:
                    owner = path if match(path) else None
                    kind = "file" if owner else None
                else:
                    kind = "anon" if owner and start == end else None
                    if not kind:
                        owner = None
                end = stop
            elif parts[0] == "Rss:" and kind:
                kb = float(parts[1]) / 1024
                if kind == "file":
                    files += kb
                else:
                    anon += kb
    return files, anon


def _cuda_library(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return ("/nvidia/" in path or "_cuda" in name or "cudnn" in name or "nccl" in name
            or "triton" in path or "cusparse" in name or "cupti" in name)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stack", help="a uint16 TIFF, e.g. the end-to-end benchmark's")
    parser.add_argument("--frames", type=int, help="predict only the first N frames (all)")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--keep-tables", action="store_true",
                        help="keep every frame's table, as the CLI does, and report their size")
    args = parser.parse_args(argv)
    _reset_peak()
    import numpy as np  # noqa: F401

    _row("python and numpy")
    import napari_infection_clock  # noqa: F401

    _row("package init (imports triton, self-bound)")
    import torch

    cuda_files, cuda_anon = _mappings(_cuda_library)
    _row("import torch", f"(GPU libraries, CUDA and triton: {cuda_files:.0f} MB mapped + "
                         f"{cuda_anon:.0f} MB "
                         f"anonymous; CUDA initialised: {torch.cuda.is_initialized()})")
    import pandas  # noqa: F401
    import torchvision  # noqa: F401

    _row("import torchvision and pandas")
    from napari_infection_clock.core.checkpoint import CheckpointMeta
    from napari_infection_clock.core.model import ModelConfig, MultitaskResNet
    from napari_infection_clock.core.predictor import Predictor
    from napari_infection_clock.core.preprocess import Preprocessing
    from napari_infection_clock.core.stack import open_stack
    from napari_infection_clock.core.tiles import TileSpec

    _row("import the package's core modules")
    torch.manual_seed(0)
    config = ModelConfig(arch=args.arch)
    model = MultitaskResNet(config).eval()
    meta = CheckpointMeta(model=config, preprocessing=Preprocessing(image_size=512))
    weights = lambda m: sum(t.numel() * t.element_size()  # noqa: E731
                            for t in [*m.parameters(), *m.buffers()]) / 2**20
    _row("model built (fp32)", f"(weights {weights(model):.0f} MB)")
    extra = {"batch_size": args.batch_size} if args.batch_size else {}
    predictor = Predictor(model, meta, device="cpu", **extra)
    copy = predictor.network is not model
    cuda_files, cuda_anon = _mappings(_cuda_library)
    _row("Predictor made", f"(runs {'a folded copy, weights' if copy else 'the model itself,'} "
                           f"{weights(predictor.network):.0f} MB; batch {predictor.batch_size}, "
                           f"{predictor.amp_dtype}, prefetch {predictor.prefetch}; GPU "
                           f"libraries now {cuda_files:.0f} MB mapped + {cuda_anon:.0f} MB "
                           "anonymous)")
    del model  # as `infection-clock predict` does
    _row("caller lets go of the fp32 model")
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 4096, size=(predictor.batch_size, 512, 512), dtype=np.uint16)
    predictor.predict_crops(raw)
    _row("first batch (oneDNN kernels chosen)")
    predictor.predict_crops(raw)
    _row("second batch")
    before = _status()["VmRSS"]
    torch.clear_autocast_cache()
    _row("autocast cache cleared", f"({before - _status()['VmRSS']:.0f} MB freed)")

    tables, frame_peaks, tif_pages = [], [], 0.0
    with open_stack(args.stack) as stack:
        frames = range(min(args.frames or stack.n_frames, stack.n_frames))
        _row("stack opened (memory map)")
        started = time.perf_counter()
        _reset_peak()
        for fp in predictor.iter_stack(stack, tiles=TileSpec(tile_size=512), frames=frames):
            frame_peaks.append(_status()["VmHWM"])
            tif_pages = max(tif_pages, _mappings(lambda p: p == str(stack.path))[0])
            if args.keep_tables:
                tables.append(fp.table)
            _reset_peak()
        wall = time.perf_counter() - started
        PEAKS.extend(frame_peaks)
        peak = max(frame_peaks)
        table_mb = sum(t.memory_usage(deep=True).sum() for t in tables) / 2**20
        n = len(frame_peaks)
        q = max(1, n // 4)
        _row(f"{n} frames predicted", f"(peak per frame: first {frame_peaks[0]:.0f}, "
             f"max {peak:.0f} at frame {frame_peaks.index(peak)}, mean of the first quarter "
             f"{np.mean(frame_peaks[:q]):.0f} / last quarter {np.mean(frame_peaks[-q:]):.0f}; "
             f"TIFF pages resident at most {tif_pages:.0f} MB; "
             f"tables kept {table_mb * 1024:.0f} kB; "
             f"{wall:.0f} s)")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        predictor.predict_crops(raw)
    live = peak_live = allocated = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        change = event.self_cpu_memory_usage  # what the op itself allocated (+) or freed (-)
        live += change
        allocated += max(change, 0)
        peak_live = max(peak_live, live)
    _row("one more batch, profiled (after the stack)",
         f"(torch tensors: {allocated / 2**20:.0f} MB allocated in the batch, at most "
         f"{peak_live / 2**20:.0f} MB live at once; the rest of the batch's peak above "
         "the resident memory before it is oneDNN's scratch and the allocators' slack)")

    print("\n| stage | peak in stage (MB) | resident after (MB) | anon / file after (MB) | notes |")
    print("| --- | --- | --- | --- | --- |")
    for row in ROWS:
        print("| " + " | ".join(row) + " |")
    print(f"\nwhole-process peak {max(PEAKS):.0f} MB (the largest stage peak); "
          f"{time.perf_counter() - T0:.0f} s")


if __name__ == "__main__":
    main()
