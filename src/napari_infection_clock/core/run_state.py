"""The state of a training run, saved atomically after every epoch so a killed run resumes.

It holds the current weights, optimizer, scheduler, grad scaler, the finished epoch, every
rank's RNG states, the best-so-far metric, epoch and weights, and the history; it loads
with ``weights_only=True`` (tensors, numbers, strings, lists and dicts only).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from .atomic import write_atomic

RUN_STATE = "run_state.pt"
FORMAT = "napari-infection-clock run state 1"


class RunStateError(ValueError):
    """A run state is in the way, unreadable, or belongs to another run."""


def save_run_state(path: str | Path, state: dict) -> Path:
    return write_atomic(path, lambda tmp: torch.save({"format": FORMAT, **state}, tmp),
                        suffix=".pt")


def load_run_state(path: str | Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise RunStateError(f"cannot read the run state '{path}' ({exc}); start again with "
                            "--overwrite") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RunStateError(f"'{path}' is not a run state of this program; start again with "
                            "--overwrite")
    return state


def run_state_to_resume(path: str | Path, resume: bool, overwrite: bool) -> dict | None:
    """The state to continue from, or None to start afresh.

    A run state in the way is never replaced silently: without ``resume`` or ``overwrite``
    this refuses. ``resume`` without a state starts afresh, so the same command serves the
    first start and every restart (torchrun ``--max-restarts``, a requeued SLURM job).
    """
    path = Path(path)
    if overwrite or not path.exists():
        return None
    if not resume:
        state = load_run_state(path)
        raise RunStateError(
            f"'{path.parent}' holds a run state (epoch {state['epoch']} of "
            f"{state['config']['epochs']} done): add --resume to continue it, or "
            "--overwrite to start again and replace it"
        )
    return load_run_state(path)


def rng_state() -> dict:
    """This process's Python, numpy and torch (and CUDA) RNG states."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
