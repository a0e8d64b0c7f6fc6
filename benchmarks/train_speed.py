"""Training speed in bf16 autocast against fp32 on this CPU (issue 12), as a ratio.

Full training steps (forward, the multitask loss, backward, AdamW) of the plugin's model,
fp32 and bf16-autocast steps alternating, so a machine whose load changes during the run
slows both alike; the median of each is reported and their ratio is the number to keep.
bf16 autocast is what ``infection-clock train --bf16-train`` uses on a CPU with bf16
instructions (AVX-512 BF16 or AMX).

Usage::

    python benchmarks/train_speed.py                         # resnet18, 64 px, batch 32
    python benchmarks/train_speed.py --image-size 128 --rounds 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import nullcontext

import torch

from napari_infection_clock.core.model import ModelConfig, MultitaskResNet
from napari_infection_clock.core.runtime import cpu_supports_bf16
from napari_infection_clock.core.trainer import MultitaskLoss


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=6, help="timed steps of each precision")
    return p.parse_args(argv)


def step(model, criterion, optimizer, batch, dtype) -> float:
    """One training step; returns its wall time in seconds."""
    x, y, t = batch
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=dtype) if dtype is not None else nullcontext():
        logits, t_pred = model(x)
        loss = criterion(logits, t_pred, y, t)[0]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def main(argv=None) -> int:
    args = parse(argv)
    if not cpu_supports_bf16():
        raise SystemExit("train_speed: this CPU has no bf16 kernels (AVX-512 BF16 or AMX); "
                         "bf16 training would only be emulated here")
    torch.manual_seed(0)
    model = MultitaskResNet(ModelConfig(arch=args.arch)).train()
    criterion = MultitaskLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    n = args.batch_size
    batch = (torch.randn(n, 3, args.image_size, args.image_size),
             torch.randint(0, 2, (n,)), torch.rand(n) * 48)
    precisions = {"fp32": None, "bf16": torch.bfloat16}
    for dtype in precisions.values():  # warm-up: oneDNN picks and caches its kernels
        step(model, criterion, optimizer, batch, dtype)
    times = {name: [] for name in precisions}
    load = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for name, dtype in precisions.items():
            times[name].append(step(model, criterion, optimizer, batch, dtype))
        load.append(os.getloadavg()[0])
    rate = {name: n / statistics.median(ts) for name, ts in times.items()}
    print(f"training steps, {args.arch}, {args.image_size} px, batch {n}, {args.rounds} rounds "
          f"alternating; {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average "
          f"{min(load):.1f}-{max(load):.1f}\n")
    print("| measure | value |\n| --- | --- |")
    for name in precisions:
        print(f"| {name} | {rate[name]:.1f} images/s (median step {statistics.median(times[name]):.2f} s) |")
    print(f"| bf16 / fp32 | {rate['bf16'] / rate['fp32']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
