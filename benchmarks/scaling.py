"""Training and prediction images/s with 1 and 2 processes under torchrun; prints a table.

Each process gets its share of the CPU cores (``OMP_NUM_THREADS`` = cores / processes), as
torchrun jobs on a shared node would; on CUDA each process gets one GPU. The scaling ratio
is (images/s with 2 processes) / (images/s with 1). Numbers are from this machine at the
time of the run: on a machine shared with other work they move from run to run, so the
configurations take turns ``--repeats`` times, the best of each is reported, and the load
average is printed before and after each.

Usage::

    python benchmarks/scaling.py                      # CPU, resnet18 at 64 px
    python benchmarks/scaling.py --device cuda --arch resnet50 --size 512 --procs 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from napari_infection_clock.core import distributed
from napari_infection_clock.core.checkpoint import CheckpointMeta
from napari_infection_clock.core.dataset import ItemDataset
from napari_infection_clock.core.items import FramePolicy, research_items
from napari_infection_clock.core.model import ModelConfig, build_model
from napari_infection_clock.core.predictor import Predictor
from napari_infection_clock.core.preprocess import Preprocessing
from napari_infection_clock.core.shards import Shard
from napari_infection_clock.core.stack import open_stack
from napari_infection_clock.core.synthetic import write_research_dataset
from napari_infection_clock.core.tiles import TileSpec
from napari_infection_clock.core.trainer import TrainConfig, iter_train


def worker(args) -> None:
    """One torchrun process: a timed training run, then a timed sharded prediction."""
    ranks, device = distributed.start(args.device)
    items = research_items(args.data, FramePolicy())
    prep = Preprocessing(image_size=args.size)
    model = build_model(ModelConfig(args.arch), init="random")
    meta = CheckpointMeta(model=ModelConfig(args.arch), preprocessing=prep)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch, device=args.device, lr=1e-4,
                         augment=False)
    ds = ItemDataset(items, prep)
    sizes = _global_batches(len(ds), args.batch, ranks.world_size)
    started, images = None, 0
    for event in iter_train(model, ds, None, config, meta):
        if event.stage == "batch" and event.epoch == 1 and event.batch == 1:
            distributed.barrier()
            started = time.perf_counter()  # after the first step (warm-up)
        elif event.stage == "batch" and started is not None:
            images += sizes[event.batch - 1]
    distributed.barrier()
    train_s = time.perf_counter() - started
    stacks = sorted(Path(args.data).glob("*/*.tif"))
    predictor = Predictor(model.eval(), meta, device=str(device), batch_size=args.batch)
    mine = Shard(ranks.rank, ranks.world_size).mine(len(stacks))
    with open_stack(stacks[0]) as stack:  # warm-up
        list(predictor.iter_stack(stack, TileSpec(), frames=[0]))
    distributed.barrier()
    start = time.perf_counter()
    frames = 0
    for i in mine:
        with open_stack(stacks[i]) as stack:
            frames += sum(1 for _ in predictor.iter_stack(stack, TileSpec()))
    total = distributed.sum_across(torch.tensor([frames])).item()
    predict_s = time.perf_counter() - start
    if ranks.is_main:
        print("RESULT " + json.dumps({"train_images_s": images / train_s,
                                      "predict_images_s": total / predict_s}))
    distributed.stop()


def _global_batches(n: int, batch: int, world: int) -> list[int]:
    """Items per step over all processes: the DistributedSampler pads each process's share
    to ceil(n / world) items (the padding is trained too), cut into batch / world."""
    share, per = -(-n // world), batch // world
    return [world * min(per, share - start) for start in range(0, share, per)]


def run(args) -> None:
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_research_dataset(data, n_infected=args.stacks // 2, n_mock=args.stacks // 2,
                               n_frames=args.frames, size=args.size, seed=0)
        turns: dict[int, list[dict]] = {n: [] for n in args.procs}
        for _ in range(args.repeats):  # taking turns, so a change of load hits both
            for n in args.procs:
                env = dict(os.environ, OMP_NUM_THREADS=str(max(1, cores // n)))
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       f"--nproc_per_node={n}", __file__, "--worker", "--data", str(data),
                       "--arch", args.arch, "--size", str(args.size), "--batch", str(args.batch),
                       "--epochs", str(args.epochs), "--device", args.device]
                load = os.getloadavg()[0]
                out = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                     check=True).stdout
                got = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
                turns[n].append({**got, "load": f"{load:.1f} -> {os.getloadavg()[0]:.1f}"})
    rows = {}
    for n, results in turns.items():
        best = max(results, key=lambda r: r["train_images_s"])
        rows[n] = {**best, "predict_images_s": max(r["predict_images_s"] for r in results)}
    base = rows[args.procs[0]]
    print(f"\n{args.arch}, {args.size} px, global batch {args.batch}, {args.epochs} epochs, "
          f"device {args.device}, {cores} CPU cores; best of {args.repeats} turn(s)\n")
    print("| processes | threads each | train images/s | ratio | predict images/s | ratio "
          "| load average (best training run) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n, r in rows.items():
        print(f"| {n} | {max(1, cores // n)} | {r['train_images_s']:.1f} | "
              f"{r['train_images_s'] / base['train_images_s']:.2f} | "
              f"{r['predict_images_s']:.1f} | "
              f"{r['predict_images_s'] / base['predict_images_s']:.2f} | {r['load']} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=16, help="global batch")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--stacks", type=int, default=4)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--device", default="cpu")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=1, help="turns per configuration (best kept)")
    args = p.parse_args()
    worker(args) if args.worker else run(args)


if __name__ == "__main__":
    main()
