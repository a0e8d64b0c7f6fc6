"""Several processes, one job: torchrun's environment, the process group and what ranks share.

Training and prediction read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as torchrun sets
them (one process per device); without them everything runs as one process. The backend is
nccl on CUDA and gloo on the CPU. Only rank 0 writes into the output folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .device import select_device


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in the job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_last(self) -> bool:
        return self.rank == self.world_size - 1


def ranks_from_env() -> Ranks:
    """torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (one process without them)."""
    env = os.environ
    return Ranks(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)),
                 int(env.get("LOCAL_RANK", 0)))


def current_ranks() -> Ranks:
    """The ranks of the initialised process group, else one process."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), ranks_from_env().local_rank)
    return Ranks()


def start(device: str = "auto") -> tuple[Ranks, torch.device]:
    """Join torchrun's process group when there is one; the device of this process.

    With several processes a CUDA device is ``cuda:LOCAL_RANK`` and the backend nccl;
    otherwise gloo. Calling it again reuses the group.
    """
    ranks = ranks_from_env()
    chosen = select_device(device)
    if chosen.type == "cuda" and ranks.world_size > 1:
        chosen = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(chosen)
    if ranks.world_size > 1 and not dist.is_initialized():
        # torchrun's store outlives a restart (--max-restarts): keys of the killed attempt,
        # such as a dead worker's address, must not be read by the next one.
        store, rank, world_size = next(dist.rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo",
                                store=dist.PrefixStore(f"attempt_{attempt}", store),
                                rank=rank, world_size=world_size)
    return current_ranks(), chosen


def stop() -> None:
    """Leave the process group (a no-op in one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather(obj) -> list:
    """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def sum_across(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (a float64 CPU copy in, the total out)."""
    values = values.detach().to(torch.float64).cpu()
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl":
            gpu = values.to(torch.cuda.current_device())
            dist.all_reduce(gpu)
            return gpu.cpu()
        dist.all_reduce(values)
    return values


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d with batch statistics over all ranks, for the CPU.

    ``torch.nn.SyncBatchNorm`` refuses CPU tensors, so ``--sync-bn`` under gloo uses this:
    the per-channel count, sum and sum of squares are summed across ranks (with gradient),
    so training matches one process that sees the whole global batch. One process with
    ``--sync-bn`` runs the same float64 arithmetic: float32 BatchNorm kernels round
    differently from CPU to CPU, and AdamW's nearly sign(gradient) steps amplified that to
    7 % of the training movement between 1 and 2 processes on an AVX2 CPU (0.002 % with
    the same arithmetic).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        channels = x.shape[1]
        # All in float64, cast once at the end: the backward pass sums three nearly
        # cancelling terms per element (direct, through the mean, through the variance),
        # which float32 leaves off by more than AdamW's eps for small gradients.
        wide = x.double()
        local = torch.cat([wide.sum((0, 2, 3)), (wide * wide).sum((0, 2, 3)),
                           wide.new_full((1,), x.numel() / channels)])
        total = _AllReduceSum.apply(local) if dist.is_initialized() else local
        n = total[-1]
        mean = total[:channels] / n
        var = total[channels:2 * channels] / n - mean * mean
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            # momentum None means a cumulative average, as in BatchNorm2d
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(m * mean.to(x.dtype))
            self.running_var.mul_(1 - m).add_(m * (var * n / (n - 1)).to(x.dtype))
        shape = (1, channels, 1, 1)
        y = (wide - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        return (y * self.weight.view(shape) + self.bias.view(shape)).to(x.dtype)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with BatchNorm statistics over all ranks, sharing its parameters and buffers.

    CUDA uses :class:`torch.nn.SyncBatchNorm`; the CPU :class:`GlooSyncBatchNorm`. The
    returned module tree trains the same tensors, and ``model`` keeps its plain BatchNorm
    layers (which prediction folds into the convolutions).
    """
    return _swap_batchnorm(model, nn.SyncBatchNorm if device.type == "cuda" else GlooSyncBatchNorm)


def _swap_batchnorm(module: nn.Module, kind: type) -> nn.Module:
    if type(module) is nn.BatchNorm2d:
        new = kind(module.num_features, module.eps, module.momentum, module.affine,
                   module.track_running_stats)
        new.weight, new.bias = module.weight, module.bias
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    twin = module.__class__.__new__(module.__class__)
    twin.__dict__ = dict(module.__dict__)
    twin._modules = {name: _swap_batchnorm(child, kind) for name, child in module._modules.items()}
    return twin
