"""Batched prediction of a stack, frame by frame, so callers can show partial results.

The hot path is built for throughput: tiles are cut with one numpy gather per frame, a
background thread reads and prepares the next batch while the model computes the current
one (where a core is free for it), batches run across frame boundaries, and a copy of the
model with BatchNorm folded in runs under ``inference_mode`` in channels-last layout: fp32
on CPU, an fp16 backbone on CUDA (fed from pinned memory with non-blocking copies), heads
always fp32 (:func:`.runtime.prediction_dtype` says why). Only a few frames are ever held
in memory, however long the stack.
"""

from __future__ import annotations

import os
import queue
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .checkpoint import CheckpointMeta
from .choices import default_batch_size
from .device import select_device
from .information import has_information
from .model import MultitaskResNet
from .preprocess import preprocess, to_device
from .results import empty_results, result_rows
from .runtime import (
    InferenceNetwork,
    prediction_dtype,
    release_free_heap,
    release_gpu_library_pages,
)
from .stack import TimelapseStack
from .targets import TimePolicy, frame_time_policy
from .tiles import TileSpec, check_boxes, crop, cut_tiles, tile_boxes

#: Batches prepared ahead of the one computing, where a core is free to prepare them.
PREFETCH_BATCHES = 2


@dataclass
class FramePrediction:
    """One finished frame: its rows of the prediction table, and where the run stands."""

    frame: int
    table: pd.DataFrame
    done: int
    total: int


def default_prefetch(device: torch.device) -> int:
    """Batches to read ahead in a thread: none on a CPU whose every core computes.

    There the reader only takes time slices from the model's threads: on 2 cores, reading
    in line was measured 4-5 % faster and 170 MB smaller (docs/benchmarks.md).
    """
    if device.type == "cpu" and (os.cpu_count() or 1) <= torch.get_num_threads():
        return 0
    return PREFETCH_BATCHES


@dataclass
class _Batch:
    """Raw (or, on CPU, already preprocessed) crops, and which frames they belong to."""

    x: torch.Tensor
    frames: list[tuple[int, int]]  # (position in the frame order, number of items)
    informative: np.ndarray  # per crop: whether it carries information (core.information)
    ready: bool = False  # already the model input


class Predictor:
    """A loaded model bound to a device, precision and batch size.

    It runs a copy of the model with BatchNorm folded into the convolutions and fp32
    heads (:class:`.runtime.InferenceNetwork`); ``model`` itself is left as it was. The
    copy is taken here: later changes to ``model`` need a new Predictor. Only the copy is
    kept, so a caller that lets go of ``model`` frees its weights (``predict`` does).
    ``compile=True`` wraps it in ``torch.compile`` (first batches are slow
    while it compiles; see docs/benchmarks.md for whether it pays on a machine).
    """

    def __init__(
        self,
        model: MultitaskResNet,
        meta: CheckpointMeta,
        device: str | torch.device = "auto",
        batch_size: int | None = None,
        precision: str = "auto",
        compile: bool = False,
        prefetch: int | None = None,
    ):
        self.device = select_device(device)
        if batch_size is None:
            batch_size = default_batch_size(self.device.type)
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.meta = meta
        self.batch_size = int(batch_size)
        self.prefetch = default_prefetch(self.device) if prefetch is None else max(int(prefetch), 0)
        self.amp_dtype = prediction_dtype(self.device, precision)
        if self.device.type == "cpu":
            release_gpu_library_pages()  # ~200 MB that ``import torch`` touched for nothing
        fast = InferenceNetwork(model, self.device, self.amp_dtype)
        #: The module that really runs: a copy of ``model`` (see :class:`.runtime.InferenceNetwork`).
        self.network = fast
        self._forward = fast
        if compile:
            try:
                self._forward = torch.compile(fast)
            except Exception as exc:  # e.g. a Python version torch.compile does not support
                self._compile_failed(exc)
        release_free_heap()  # the fp32 backbone copy made while folding

    @property
    def _cuda(self) -> bool:
        return self.device.type == "cuda"

    def _model_input(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw crops on any device -> preprocessed channels-last input on the target device."""
        if raw.device != self.device:
            raw = to_device(raw, self.device)
        x = preprocess(raw, self.meta.preprocessing)
        return x.contiguous(memory_format=torch.channels_last)

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Model input -> (p_infected, clamped time) as CPU float tensors."""
        with torch.inference_mode():
            logits, time = self._network_output(x)
            p = torch.softmax(logits.float(), dim=1)[:, 1]
            lo, hi = self.meta.time.clamp
            time = time.float().clamp(lo, hi)
        return p.cpu(), time.cpu()

    def _network_output(self, x: torch.Tensor):
        """The compiled network's output, or the plain one's once compiling has failed.

        torch.compile fails at the first call, not when it is asked for (no C++ compiler,
        an unsupported operator); prediction then goes on without it, with a warning.
        A real error of the model raises from the plain network, without that warning.
        """
        if self._forward is self.network:
            return self.network(x)
        try:
            return self._forward(x)
        except Exception as exc:
            out = self.network(x)  # the model's own error, if it has one, raises here
            self._compile_failed(exc)
            return out

    def _compile_failed(self, exc: Exception) -> None:
        cause = getattr(exc, "inner_exception", None) or exc  # inductor wraps its errors
        reason = (str(cause).strip().splitlines() or [""])[0][:200]
        warnings.warn(f"torch.compile failed ({type(cause).__name__}: {reason}); "
                      "predicting without it", RuntimeWarning, stacklevel=4)
        self._forward = self.network

    def predict_crops(self, crops: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw crops (N, h, w[, 3]) -> (p_infected, predicted time clamped), one batch."""
        x = torch.as_tensor(np.ascontiguousarray(crops) if isinstance(crops, np.ndarray) else crops)
        p, t = self._run(self._model_input(x))
        return p.numpy(), t.numpy()

    def predict_many(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`predict_crops` for any number of crops; same-sized ones share batches."""
        p = np.empty(len(crops), np.float32)
        t = np.empty(len(crops), np.float32)
        by_shape: dict[tuple, list[int]] = {}
        for i, c in enumerate(crops):
            by_shape.setdefault(c.shape, []).append(i)
        for members in by_shape.values():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                p[chunk], t[chunk] = self.predict_crops(np.stack([crops[i] for i in chunk]))
        return p, t

    def iter_stack(
        self,
        stack: TimelapseStack,
        tiles: TileSpec = TileSpec(),
        frames: Iterable[int] | None = None,
        boxes: np.ndarray | None = None,
        first_frame: int | None = None,
        time: TimePolicy | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Iterator[FramePrediction]:
        """Yield each frame's rows as soon as they are computed, in frame order.

        ``boxes`` (N, 4) replaces the tile grid with given regions; ``first_frame`` is
        predicted before the rest (the frame on screen) and on its own, so it shows at
        once; ``should_stop`` is polled between batches for a cooperative cancel. Crops
        without information (:mod:`.information`) are marked, not answered.
        """
        order = list(range(stack.n_frames)) if frames is None else [int(f) for f in frames]
        if first_frame is not None and first_frame in order:
            order.remove(first_frame)
            order.insert(0, first_frame)
        height, width = stack.frame_shape
        if boxes is None:
            boxes, grid_rc = tile_boxes(height, width, tiles)
        else:
            boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
            check_boxes(boxes, height, width)
            grid_rc = np.stack([np.arange(len(boxes)), np.zeros(len(boxes), np.int64)], axis=1)
        time = time or frame_time_policy(stack, self.meta)
        if not order or not len(boxes):
            return
        stopped = threading.Event()
        batches = self._prefetched(self._batches(stack, order, boxes, stopped), stopped)
        results: list[list[tuple[torch.Tensor, torch.Tensor, np.ndarray]]] = [[] for _ in order]
        counts = [0] * len(order)
        next_out = 0
        try:
            for batch in batches:
                if should_stop is not None and should_stop():
                    return
                p, t = self._run(batch.x if batch.ready else self._model_input(batch.x))
                start = 0
                for pos, n in batch.frames:
                    results[pos].append((p[start : start + n], t[start : start + n],
                                         batch.informative[start : start + n]))
                    counts[pos] += n
                    start += n
                while next_out < len(order) and counts[next_out] == len(boxes):
                    if should_stop is not None and should_stop():
                        return
                    parts = results[next_out]
                    results[next_out] = []
                    frame = order[next_out]
                    table = result_rows(
                        stack.name, frame, float(time.hours(frame)), boxes, grid_rc,
                        torch.cat([a for a, _, _ in parts]).numpy(),
                        torch.cat([b for _, b, _ in parts]).numpy(),
                        frame_shape=stack.frame_shape, channel=stack.channel,
                        channel_name=stack.channel_desc,
                        informative=np.concatenate([c for _, _, c in parts]),
                    )
                    next_out += 1
                    release_free_heap()
                    yield FramePrediction(frame=frame, table=table, done=next_out, total=len(order))
        finally:
            stopped.set()
            batches.close()

    def _batches(
        self, stack: TimelapseStack, order: list[int], boxes: np.ndarray, stopped: threading.Event
    ) -> Iterator[_Batch]:
        """Read frames, cut their tiles and pack them into batches (run in a thread).

        Equal-sized items fill batches across frame boundaries; the first frame is sent
        on its own so it shows at once. Regions of mixed sizes are batched per frame, in
        runs of equal size.
        """
        height, width = stack.frame_shape
        whole = len(boxes) == 1 and tuple(boxes[0]) == (0, 0, height, width)
        sizes = boxes[:, 2:] - boxes[:, :2]
        uniform = bool((sizes == sizes[0]).all())
        pending: list[tuple[int, np.ndarray]] = []
        filled = 0
        for pos, frame in enumerate(order):
            if stopped.is_set():
                return
            image = stack.frame(frame)
            if not uniform:  # runs of equal-sized regions, in box order
                run: list[np.ndarray] = []
                for box in boxes:
                    c = crop(image, box)
                    if run and (c.shape != run[0].shape or len(run) == self.batch_size):
                        yield self._pack([(pos, np.stack(run))])
                        run = []
                    run.append(c)
                yield self._pack([(pos, np.stack(run))])
                continue
            crops = image[None] if whole else cut_tiles(image, boxes)
            del image
            stack.release_pages()
            while len(crops):
                take = min(self.batch_size - filled, len(crops))
                pending.append((pos, crops[:take]))
                filled += take
                crops = crops[take:]
                if filled == self.batch_size or (pos == 0 and not len(crops)):
                    yield self._pack(pending)
                    pending, filled = [], 0
        if pending:
            yield self._pack(pending)

    def _pack(self, parts: list[tuple[int, np.ndarray]]) -> _Batch:
        """One batch tensor: pinned for an asynchronous copy on CUDA, preprocessed on CPU;
        which crops carry information is read off the raw pixels."""
        n = sum(len(a) for _, a in parts)
        first = parts[0][1]
        frames = [(pos, len(a)) for pos, a in parts]
        informative = np.concatenate([has_information(a) for _, a in parts])
        if len(parts) == 1:
            raw = torch.from_numpy(np.ascontiguousarray(first))
        else:
            raw = torch.from_numpy(np.empty((n, *first.shape[1:]), dtype=first.dtype))
            np.concatenate([a for _, a in parts], out=raw.numpy())
        if self._cuda:
            return _Batch(raw.pin_memory(), frames, informative)
        if self.device.type == "cpu":  # preprocessing overlaps with the model here too
            return _Batch(self._model_input(raw), frames, informative, ready=True)
        return _Batch(raw, frames, informative)

    def _prefetched(self, batches: Iterator[_Batch], stopped: threading.Event) -> Iterator[_Batch]:
        """Run ``batches`` in a background thread, ``prefetch`` batches ahead."""
        if self.prefetch == 0:
            yield from batches
            return
        box: queue.Queue = queue.Queue(maxsize=self.prefetch)
        done = object()

        def produce():
            try:
                for batch in batches:
                    while not stopped.is_set():
                        try:
                            box.put(batch, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stopped.is_set():
                        return
                box.put(done)
            except BaseException as err:  # handed to the consumer, raised there
                box.put(err)

        worker = threading.Thread(target=produce, name="infection-clock-reader", daemon=True)
        worker.start()
        try:
            while True:
                item = box.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stopped.set()
            while worker.is_alive():  # unblock a producer waiting on a full queue
                try:
                    box.get(timeout=0.05)
                except queue.Empty:
                    pass
            worker.join()

    def predict_stack(self, stack: TimelapseStack, **kwargs) -> pd.DataFrame:
        """The whole prediction table of a stack, rows sorted by frame."""
        tables = [fp.table for fp in self.iter_stack(stack, **kwargs)]
        if not tables:
            return empty_results()
        table = pd.concat(tables, ignore_index=True)
        return table.sort_values(["frame", "tile_row", "tile_col"], kind="stable").reset_index(
            drop=True
        )
