"""How models run on this machine, shared by prediction and training.

Which reduced precision a device has kernels for and which one prediction may use, the
network prediction runs (BatchNorm folded, heads in fp32), and handing memory back to
the system: freed heap memory, and the pages of GPU libraries a CPU-only run never uses.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import functools
import mmap
import re

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from .choices import PRECISIONS
from .model import MultitaskResNet


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


def prediction_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The backbone's autocast dtype for prediction; None means fp32.

    ``"auto"`` is the fastest precision that keeps predictions within 0.02 in p and 0.25 h
    of the research pipeline's fp32 (tests/test_speed_parity.py): fp16 on CUDA, fp32
    elsewhere. bf16 does not hold that: on a ResNet50 whose times spread over 0-30 h its
    7-bit mantissa moved times by 0.3-0.8 h (docs/benchmarks.md).
    """
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    return autocast_dtype(device, precision)


class InferenceNetwork(nn.Module):
    """A model as prediction runs it, made without touching the caller's model.

    The backbone is a copy with BatchNorm folded into its convolutions (one pass over each
    activation less), channels-last, its weights stored in ``dtype`` and run under autocast
    (autocast would round them at every call anyway); the heads are fp32 copies and always
    run in fp32, so times are never rounded to a reduced precision's steps.
    """

    forward_heads = MultitaskResNet.forward_heads

    def __init__(self, model: MultitaskResNet, device: torch.device, dtype: torch.dtype | None):
        super().__init__()
        self.config = model.config
        self.dtype = dtype
        self.backbone = _folded(model.backbone).to(
            device, dtype=dtype, memory_format=torch.channels_last
        )
        self.classifier = copy.deepcopy(model.classifier).to(device).eval()
        self.regressor = copy.deepcopy(model.regressor).to(device).eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.dtype is None:
            features = self.backbone(x)
        else:
            with torch.autocast(x.device.type, dtype=self.dtype):
                features = self.backbone(x)
        with torch.autocast(x.device.type, enabled=False):
            return self.forward_heads(features.float())


def _folded(backbone: nn.Module) -> nn.Module:
    """An eval-mode copy of ``backbone`` with BatchNorm folded into its convolutions (a
    plain copy for a backbone that is not a torchvision ResNet). Folding moves fp32 outputs
    by ~1e-4 relative (tests/test_speed_parity.py checks the predictions)."""
    backbone = copy.deepcopy(backbone).eval()
    for conv, bn in _conv_bn_pairs(backbone):
        _replace(backbone, conv, fuse_conv_bn_eval(backbone.get_submodule(conv),
                                                   backbone.get_submodule(bn)))
        _replace(backbone, bn, nn.Identity())
    return backbone


def _conv_bn_pairs(backbone: nn.Module) -> list[tuple[str, str]]:
    """(convolution, BatchNorm) module names where the BatchNorm alone reads the
    convolution's output: in torchvision's ResNets (torchvision.models.resnet) the stem's
    and every block's ``convN`` -> ``bnN``, and a block's ``downsample`` (conv, BatchNorm).

    Read off the modules, not traced: torch.fx's trace patches ``nn.Module.__call__`` for
    the whole process, and a run computing on another thread meanwhile (a ranking while
    "Use new model" starts a refresh) failed with "module is not installed as a submodule".
    """
    pairs = []
    for name, module in backbone.named_modules():
        if not isinstance(module, (ResNet, BasicBlock, Bottleneck)):
            continue
        prefix = f"{name}." if name else ""
        for i in (1, 2, 3):
            if hasattr(module, f"bn{i}"):
                pairs.append((f"{prefix}conv{i}", f"{prefix}bn{i}"))
        downsample = getattr(module, "downsample", None)  # blocks only
        if isinstance(downsample, nn.Sequential) and len(downsample) == 2:
            pairs.append((f"{prefix}downsample.0", f"{prefix}downsample.1"))
    return [(conv, bn) for conv, bn in pairs
            if type(backbone.get_submodule(conv)) is nn.Conv2d
            and type(backbone.get_submodule(bn)) is nn.BatchNorm2d
            and backbone.get_submodule(bn).track_running_stats]


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent), leaf, module)


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


#: Libraries that only a GPU uses, as the default (CUDA) torch wheel maps them: NVIDIA's
#: (cuBLAS, cuDNN, NCCL, ...), torch's CUDA parts, and triton (torch.compile on GPUs).
GPU_LIBRARIES = re.compile(
    r"/nvidia/|/triton/|/lib(torch_cuda|c10_cuda|caffe2_nvrtc|torch_nvshmem)"
)


def release_gpu_library_pages() -> int:
    """Unmap the resident pages of GPU libraries from this process; returns the bytes.

    The default torch wheel links its CUDA libraries, so ``import torch`` maps them even
    where no GPU is used and their static initialisers touch ~200 MB of their code and
    data (docs/benchmarks.md). Only read-only mappings with no private (copy-on-write)
    pages are released: every page there is an unmodified page of the file, which the
    kernel maps again from the page cache if it is ever touched. Nothing happens where
    ``/proc/self/smaps`` or ``madvise`` is missing (not Linux).
    """
    madvise = _madvise()
    if madvise is None:
        return 0
    try:
        with open("/proc/self/smaps") as f:
            text = f.read()
    except OSError:
        return 0
    released = 0
    for start, stop, perms, path, rss_kb, private_kb in _mappings(text):
        if (rss_kb and not private_kb and "w" not in perms and GPU_LIBRARIES.search(path)
                and madvise(start, stop - start, mmap.MADV_DONTNEED) == 0):
            released += rss_kb * 1024
    return released


def _mappings(smaps: str):
    """(start, stop, permissions, path, resident kB, anonymous kB) per mapping of smaps."""
    mapping = None
    for line in smaps.splitlines():
        key, _, rest = line.partition(" ")
        if not key.endswith(":"):
            if mapping:
                yield mapping
            fields = line.split(maxsplit=5)
            start, stop = (int(v, 16) for v in fields[0].split("-"))
            mapping = [start, stop, fields[1], fields[5] if len(fields) > 5 else "", 0, 0]
        elif key == "Rss:":
            mapping[4] = int(rest.split()[0])
        elif key == "Anonymous:":
            mapping[5] = int(rest.split()[0])
    if mapping:
        yield mapping


@functools.cache
def _madvise():
    """The C library's ``madvise`` (address, length, advice) -> 0 on success, or None."""
    name = ctypes.util.find_library("c")
    try:
        function = getattr(ctypes.CDLL(name), "madvise", None) if name else None
    except OSError:
        return None
    if function is not None:
        function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return function
