"""How models run on this machine, shared by prediction and training.

Which reduced precision a device has kernels for, an inference copy of a model with
BatchNorm folded into its convolutions, and handing freed heap memory back to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse as fold_batchnorm

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_supports_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels here (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu":
            return torch.bfloat16 if cpu_supports_bf16() else None
        return None
    return torch.bfloat16 if precision == "bf16" else torch.float16


def inference_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A channels-last copy of an eval-mode ``model`` with BatchNorm folded into its convs,
    its weights stored in the autocast ``dtype``.

    Autocast would round the weights to ``dtype`` at every call anyway, so storing them
    rounded gives the same numbers in half the memory. Folding changes rounding slightly,
    so only the reduced precisions use the copy; a model that cannot be traced
    symbolically is used as it is.
    """
    try:
        folded = fold_batchnorm(model)
    except Exception:  # noqa: BLE001 - torch.fx raises many kinds; the plain model still works
        return model
    return folded.eval().to(dtype=dtype, memory_format=torch.channels_last)


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None on other C libraries."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_free_heap() -> None:
    """Hand memory freed inside glibc's heaps back to the system.

    glibc keeps freed blocks below its mmap threshold (which grows to 32 MB with the
    batch tensors) in per-thread arenas; without this, resident memory of a streamed
    stack grows well past what is in use (measured in docs/benchmarks.md).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
