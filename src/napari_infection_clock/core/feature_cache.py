"""Backbone features cached per (image, frame, tile, backbone weights).

Why: retraining the heads after a few new labels should cost the backbone passes of the
new items only. A feature is keyed on everything it depends on, so a stale one is never
served: the stack file (path, size, modification time, inode; pixel content for stacks
without a file), the frame, the box, the preprocessing, the autocast dtype and a digest of
the backbone's state dict (weights and BatchNorm statistics). Rewriting the image,
changing the tiles, fine-tuning or loading another backbone thus all miss.

Features are of the un-augmented crops (the backbone runs in eval mode), so heads-only
training on them sees no augmentation.
"""

from __future__ import annotations

import hashlib
import os
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .dataset import ItemDataset
from .preprocess import preprocess, to_device

#: Default bound on cached features: 50,000 ResNet50 features are about 400 MB.
MAX_ITEMS = 50_000


@dataclass
class FeatureProgress:
    """Backbone passes done so far for the items missing from the cache."""

    done: int
    total: int


#: backbone -> (state stamp, digest), so a warm retrain does not re-hash 94 MB of weights.
_DIGESTS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, str]] = weakref.WeakKeyDictionary()


def _state_stamp(backbone: nn.Module) -> tuple:
    """What changes whenever a parameter or buffer changes: each tensor's storage address,
    layout and version counter (bumped by every in-place update: optimiser steps,
    ``load_state_dict``, BatchNorm statistics, ``.data`` copies)."""
    return tuple(
        (name, t.data_ptr(), t._version, t.dtype, tuple(t.shape), t.stride(), str(t.device))
        for name, t in backbone.state_dict(keep_vars=True).items()
    )


def backbone_digest(backbone: nn.Module) -> str:
    """A hash of every parameter and buffer of ``backbone`` (names, dtypes, shapes, bytes).

    Remembered per module while its state stamp (:func:`_state_stamp`) is unchanged.
    """
    stamp = _state_stamp(backbone)
    known = _DIGESTS.get(backbone)
    if known is not None and known[0] == stamp:
        return known[1]
    digest = _hash_state(backbone)
    _DIGESTS[backbone] = (stamp, digest)
    return digest


def _hash_state(backbone: nn.Module) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name, value in backbone.state_dict().items():
        v = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{v.dtype}|{tuple(value.shape)}|".encode())
        h.update(v.view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def file_identity(path: str) -> tuple | None:
    """What changes when a file is rewritten: resolved path, size, mtime (ns), inode."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino)


def _content_hash(pixels: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{pixels.dtype}|{pixels.shape}|".encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


class FeatureCache:
    """In-memory, least-recently-used store of backbone features (float32, on the CPU).

    Keep one per session (the training widget holds it) so successive heads-only runs
    reuse each other's features. ``hits`` and ``misses`` count the last call.
    """

    def __init__(self, max_items: int = MAX_ITEMS):
        self.max_items = int(max_items)
        self._store: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        self._store.clear()

    def features(
        self,
        backbone: nn.Module,
        dataset: ItemDataset,
        device: torch.device,
        amp_dtype: torch.dtype | None = None,
        batch_size: int = 32,
        should_stop: Callable[[], bool] | None = None,
    ) -> torch.Tensor | None:
        """(N, F) features of all items of ``dataset``; None when stopped."""
        out = None
        for event in self.iter_features(backbone, dataset, device, amp_dtype, batch_size, should_stop):
            if isinstance(event, torch.Tensor):
                out = event
        return out

    def iter_features(
        self,
        backbone: nn.Module,
        dataset: ItemDataset,
        device: torch.device,
        amp_dtype: torch.dtype | None = None,
        batch_size: int = 32,
        should_stop: Callable[[], bool] | None = None,
    ) -> Iterator[FeatureProgress | torch.Tensor]:
        """Compute what is missing, yielding progress per batch, then the (N, F) tensor.

        Stopping (``should_stop``) keeps what was computed, so the next call resumes.
        """
        keys = self._keys(backbone, dataset, amp_dtype)
        rows: list[torch.Tensor | None] = [self._store.get(k) for k in keys]
        for k, row in zip(keys, rows):
            if row is not None:
                self._store.move_to_end(k)
        missing = [i for i, row in enumerate(rows) if row is None]
        self.misses, self.hits = len(missing), len(keys) - len(missing)
        if missing:
            yield FeatureProgress(0, len(missing))
        done = 0
        for chunk in _same_shape_chunks(dataset, missing, batch_size):
            if should_stop is not None and should_stop():
                return
            raw = torch.from_numpy(np.stack([dataset.raw_crop(i) for i in chunk]))
            feats = _backbone_features(backbone, raw, dataset, device, amp_dtype)
            for i, f in zip(chunk, feats):
                rows[i] = f
                self._put(keys[i], f)
            done += len(chunk)
            yield FeatureProgress(done, len(missing))
        if not keys:
            yield torch.empty(0, 0)
            return
        yield torch.stack(rows)

    def _put(self, key: tuple, value: torch.Tensor) -> None:
        self._store[key] = value
        while len(self._store) > self.max_items:
            self._store.popitem(last=False)

    def _keys(self, backbone: nn.Module, dataset: ItemDataset, amp_dtype) -> list[tuple]:
        prep = dataset.prep
        common = (backbone_digest(backbone), prep.image_size, tuple(prep.mean), tuple(prep.std),
                  str(amp_dtype))
        sources: dict[tuple, tuple | None] = {}
        keys = []
        for i, item in enumerate(dataset.items):
            where = (item.stack, item.channel)
            if where not in sources:
                known = where in getattr(dataset, "_stacks", {})
                in_memory = known and dataset.stack(*where).path is None
                sources[where] = None if in_memory else file_identity(item.stack)
            source = sources[where]
            if source is None:  # no file to stat: the pixels themselves are the identity
                source = ("content", _content_hash(dataset.raw_crop(i)))
            keys.append((*common, source, item.channel, item.frame, item.box))
        return keys


def _same_shape_chunks(dataset: ItemDataset, indices: list[int], size: int) -> Iterator[list[int]]:
    """Runs of at most ``size`` consecutive indices whose crops share a shape."""
    chunk: list[int] = []
    shape = None
    for i in indices:
        box = dataset.items[i].box
        s = (box[2] - box[0], box[3] - box[1]) if box is not None else ("frame", dataset.items[i].stack)
        if chunk and (s != shape or len(chunk) == size):
            yield chunk
            chunk = []
        chunk.append(i)
        shape = s
    if chunk:
        yield chunk


def _backbone_features(backbone, raw, dataset, device, amp_dtype) -> torch.Tensor:
    """Backbone of ``raw`` crops in eval mode, as float32 CPU rows; the mode is restored."""
    was_training = backbone.training
    backbone.eval()
    amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    try:
        with torch.inference_mode(), amp:
            x = preprocess(to_device(raw, device), dataset.prep)
            feats = backbone(x.contiguous(memory_format=torch.channels_last)).float().cpu()
        return feats.clone()  # outside inference mode: a normal tensor autograd can use
    finally:
        backbone.train(was_training)
