"""Batched prediction of a stack, frame by frame, so callers can show partial results."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .checkpoint import CheckpointMeta
from .dataset import ItemDataset
from .device import select_device
from .model import MultitaskResNet
from .preprocess import preprocess
from .results import empty_results, result_rows
from .stack import TimelapseStack
from .targets import TimePolicy
from .tiles import TileSpec, crop, tile_boxes

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class FramePrediction:
    """One finished frame: its rows of the prediction table, and where the run stands."""

    frame: int
    table: pd.DataFrame
    done: int
    total: int


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


def frame_time_policy(stack: TimelapseStack, meta: CheckpointMeta) -> TimePolicy:
    """The stack's own frame interval when it has one (metadata or user), else the checkpoint's."""
    interval = (
        stack.frame_interval_h
        if stack.frame_interval_source in ("metadata", "user")
        else meta.time.frame_interval_h
    )
    return TimePolicy(
        frame_interval_h=interval,
        onset_h=meta.time.onset_h,
        clamp=meta.time.clamp,
        start_offset_h=getattr(stack, "start_offset_h", 0.0),
    )


class Predictor:
    """A loaded model bound to a device, precision and batch size."""

    def __init__(
        self,
        model: MultitaskResNet,
        meta: CheckpointMeta,
        device: str | torch.device = "auto",
        batch_size: int = 16,
        precision: str = "auto",
    ):
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.device = select_device(device)
        self.meta = meta
        self.batch_size = int(batch_size)
        self.amp_dtype = autocast_dtype(self.device, precision)
        self.model = model.to(self.device).eval().to(memory_format=torch.channels_last)

    def predict_crops(self, crops: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw crops (N, h, w[, 3]) -> (p_infected, predicted time clamped), one batch."""
        x = torch.as_tensor(np.ascontiguousarray(crops) if isinstance(crops, np.ndarray) else crops)
        x = preprocess(x.to(self.device, non_blocking=True), self.meta.preprocessing)
        x = x.contiguous(memory_format=torch.channels_last)
        amp = (
            torch.autocast(self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else nullcontext()
        )
        with torch.inference_mode(), amp:
            logits, time = self.model(x)
        p = torch.softmax(logits.float(), dim=1)[:, 1]
        lo, hi = self.meta.time.clamp
        return p.cpu().numpy(), time.float().clamp(lo, hi).cpu().numpy()

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
        """Yield each frame's rows as soon as they are computed.

        ``boxes`` (N, 4) replaces the tile grid with given regions; ``first_frame`` is
        predicted before the rest (the frame on screen); ``should_stop`` is polled between
        batches for a cooperative cancel.
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
            grid_rc = np.stack([np.arange(len(boxes)), np.zeros(len(boxes), np.int64)], axis=1)
        time = time or frame_time_policy(stack, self.meta)
        whole = len(boxes) == 1 and tuple(boxes[0]) == (0, 0, height, width)

        for done, frame in enumerate(order, start=1):
            if should_stop is not None and should_stop():
                return
            image = stack.frame(frame)
            p, t = self.predict_many([image] if whole else [crop(image, b) for b in boxes])
            table = result_rows(stack.name, frame, float(time.hours(frame)), boxes, grid_rc, p, t)
            yield FramePrediction(frame=frame, table=table, done=done, total=len(order))

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

    def predict_stack(self, stack: TimelapseStack, **kwargs) -> pd.DataFrame:
        """The whole prediction table of a stack, rows sorted by frame."""
        tables = [fp.table for fp in self.iter_stack(stack, **kwargs)]
        if not tables:
            return empty_results()
        table = pd.concat(tables, ignore_index=True)
        return table.sort_values(["frame", "tile_row", "tile_col"], kind="stable").reset_index(
            drop=True
        )


def predict_items(
    predictor: Predictor,
    items,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[pd.DataFrame]:
    """Predict labelled items frame by frame; rows carry the truth (``true_class``,
    ``true_time_h``) so the table feeds :func:`.metrics.evaluate_table` directly."""
    by_frame: dict[tuple[str, int], list[int]] = {}
    for i, item in enumerate(items):
        by_frame.setdefault((item.stack, item.frame), []).append(i)
    reader = ItemDataset(items, predictor.meta.preprocessing)
    for (stack_path, frame), members in by_frame.items():
        if should_stop is not None and should_stop():
            return
        p, t = predictor.predict_many([reader.raw_crop(i) for i in members])
        h, w = reader.stack(stack_path).frame_shape
        boxes = np.array([items[i].box or (0, 0, h, w) for i in members])
        sizes = np.maximum(boxes[:, 2:] - boxes[:, :2], 1)
        table = result_rows(
            Path(stack_path).stem, frame, items[members[0]].hours, boxes, boxes[:, :2] // sizes, p, t
        )
        table["true_class"] = [items[i].label for i in members]
        table["true_time_h"] = [items[i].time_target for i in members]
        yield table
