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
from collections import Counter

import torch
from torch import nn
from torch.fx import Node, symbolic_trace
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .model import MultitaskResNet

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
    """An eval-mode copy of ``backbone`` with BatchNorm folded into its convolutions; a
    plain copy when it cannot be traced symbolically. Folding moves fp32 outputs by ~1e-4
    relative (tests/test_speed_parity.py checks the predictions).

    The copy stays a plain module: torch.fx's traces and graph modules are reference
    cycles that only a full collection frees, and while a dock is open those are rare
    (ui/gc_freeze.py), so each finished run's copy stayed (95 MB a run with a resnet50).
    Only a weightless copy is traced, to find which BatchNorm follows which convolution.
    """
    backbone = copy.deepcopy(backbone).eval()
    try:
        pairs = _conv_bn_pairs(copy.deepcopy(backbone).to("meta"))
    except Exception:  # noqa: BLE001 - torch.fx raises many kinds; the plain copy still works
        return backbone
    for conv, bn in pairs:
        _replace(backbone, conv, fuse_conv_bn_eval(backbone.get_submodule(conv),
                                                   backbone.get_submodule(bn)))
        _replace(backbone, bn, nn.Identity())
    return backbone


def _conv_bn_pairs(backbone: nn.Module) -> list[tuple[str, str]]:
    """(convolution, BatchNorm) module names where the BatchNorm alone reads the
    convolution's output, each called once, as :func:`torch.fx.experimental.optimization.fuse`
    folds them."""
    graph = symbolic_trace(backbone).graph
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    pairs = []
    for node in graph.nodes:
        source = node.args[0] if node.op == "call_module" and node.args else None
        if (
            isinstance(source, Node) and source.op == "call_module"
            and type(backbone.get_submodule(node.target)) is nn.BatchNorm2d
            and type(backbone.get_submodule(source.target)) is nn.Conv2d
            and backbone.get_submodule(node.target).track_running_stats
            and len(source.users) == 1 and calls[node.target] == calls[source.target] == 1
        ):
            pairs.append((source.target, node.target))
    return pairs


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
