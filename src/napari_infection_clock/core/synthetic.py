"""Deterministic synthetic infected and mock time-lapse stacks with a known onset.

Why: tests, demos and smoke training need data whose truth is known exactly and that
carries a learnable signal for *both* heads (SPEC 3):

- every well grows (logistic cell density, cells slowly spreading), so experiment time
  is visible in mock wells; the start density is random per well, so density alone is
  not an exact clock;
- in infected wells growth stalls after the onset and each cell, after a random latency,
  rounds up, turns bright with a granular texture that ramps up over hours, and late on
  detaches, leaving a small bright debris spot. The fraction of affected cells and their
  brightness grow with the infection duration ``max(t - onset, 0)``, which is therefore
  readable from a single frame.

Images look roughly like phase contrast: an uneven textured background, dark cell bodies
with a bright halo, per-frame camera noise. Cells are drawn as soft ellipses in small
patches around each cell, all cells and frames at once, and accumulated with
``np.bincount``; the field wraps around at the borders.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .atomic import write_text_atomic
from .stack import write_stack
from .targets import DEFAULT_FRAME_INTERVAL_H, DEFAULT_ONSET_H, TimePolicy

#: Full-scale value of each output type; uint16 stacks use a 12-bit camera-like range.
DTYPE_FULL_SCALE = {"uint8": 255, "uint16": 4095}

# Cell population and growth (per 128 x 128 pixels; hours).
_CAPACITY_PER_128 = 170
_START_FRACTION = (0.10, 0.25)
_GROWTH_PER_H = 0.09
_STALL_AFTER_ONSET_H = 6.0
# Infection progression, per cell (hours after that cell is infected).
_LATENCY_MIN_H = 0.25
_LATENCY_GAMMA = (2.0, 0.6)
_ROUNDING_H = 3.0
_BRIGHTENING_H = 10.0
_DETACH_AFTER_H = (20.0, 32.0)
_DETACH_DURATION_H = 2.0
_DEBRIS_RADIUS = 1.5
# Appearance, in units of the full scale.
_BACKGROUND = 0.5
_PATCH_HALF = 11
_CAMERA_NOISE = 0.01


@dataclass(frozen=True)
class SyntheticWell:
    """One synthetic well: whether it is infected, its seed, and its time axis."""

    infected: bool
    seed: int
    n_frames: int = 48
    size: int = 128
    frame_interval_h: float = DEFAULT_FRAME_INTERVAL_H
    onset_h: float = DEFAULT_ONSET_H
    dtype: str = "uint16"
    # How this configuration looks (the defaults are the demo's; benchmarks/quality.py
    # tests on a shifted one): cell density and size, contrast of cells against the
    # background, a left-to-right illumination ramp, camera noise, infection latency.
    density: float = 1.0
    cell_scale: float = 1.0
    contrast: float = 1.0
    illumination: float = 0.0
    noise: float = _CAMERA_NOISE
    latency_scale: float = 1.0

    def __post_init__(self):
        if int(self.n_frames) < 1:
            raise ValueError(f"n_frames must be at least 1, got {self.n_frames!r}")
        if int(self.size) < 32:
            raise ValueError(f"size must be at least 32 pixels, got {self.size!r}")
        if not self.frame_interval_h > 0:
            raise ValueError(
                f"frame_interval_h must be positive hours, got {self.frame_interval_h!r}"
            )
        if not self.onset_h >= 0:
            raise ValueError(f"onset_h must be zero or positive hours, got {self.onset_h!r}")
        for name in ("density", "cell_scale", "contrast", "latency_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not self.noise >= 0:
            raise ValueError(f"noise must be zero or positive, got {self.noise!r}")
        if self.dtype not in DTYPE_FULL_SCALE:
            raise ValueError(
                f"dtype must be one of {sorted(DTYPE_FULL_SCALE)}, got {self.dtype!r}"
            )

    @property
    def policy(self) -> TimePolicy:
        """The time policy that turns this well's frame indices into targets."""
        return TimePolicy(frame_interval_h=self.frame_interval_h, onset_h=self.onset_h)

    def render(self) -> np.ndarray:
        """The (T, H, W) stack; the same well always renders the same array."""
        return _render(self)


def generate_stack(
    infected: bool,
    *,
    seed: int,
    n_frames: int = 48,
    size: int = 128,
    frame_interval_h: float = DEFAULT_FRAME_INTERVAL_H,
    onset_h: float = DEFAULT_ONSET_H,
    dtype: str = "uint16",
) -> np.ndarray:
    """A (T, H, W) infected or mock stack. The same seed gives the same field of view for
    both classes (identical before the onset), so a pair shows the infection alone."""
    return SyntheticWell(
        infected=bool(infected),
        seed=int(seed),
        n_frames=int(n_frames),
        size=int(size),
        frame_interval_h=float(frame_interval_h),
        onset_h=float(onset_h),
        dtype=dtype,
    ).render()


def sample_pair(
    n_frames: int = 48, size: int = 256, seed: int = 0
) -> dict[str, tuple[np.ndarray, dict]]:
    """One infected and one mock stack of the same field, each with its truth, for a viewer."""
    return {kind: sample_well(kind, n_frames, size, seed) for kind in ("infected", "mock")}


def sample_well(
    kind: str, n_frames: int = 48, size: int = 256, seed: int = 0
) -> tuple[np.ndarray, dict]:
    """The ``kind`` ("infected" or "mock") well of :func:`sample_pair` alone: each well is
    rendered on its own (a viewer's sample needs one; rendering is seconds at 256 px)."""
    infected = {"infected": True, "mock": False}[kind]
    well = SyntheticWell(infected=infected, seed=seed, n_frames=n_frames, size=size)
    meta = {
        "frame_interval_h": well.frame_interval_h,
        "onset_h": well.onset_h,
        "infected": infected,
    }
    return well.render(), meta


def write_research_dataset(
    root,
    *,
    n_infected: int = 6,
    n_mock: int = 6,
    n_frames: int = 48,
    size: int = 128,
    frame_interval_h: float = DEFAULT_FRAME_INTERVAL_H,
    onset_h: float = DEFAULT_ONSET_H,
    seed: int = 0,
    dtype: str = "uint8",
    **look,
) -> list[Path]:
    """Write ``ROOT/infected/*.tif`` and ``ROOT/uninfected/*.tif`` (the research layout,
    SPEC 2) plus ``ROOT/dataset.json`` with the truth; returns the stack paths. ``look``:
    :class:`SyntheticWell`'s appearance fields (density, cell_scale, contrast, ...).

    Each well has its own seed drawn from ``seed``; positions ``_p<N>_`` are unique over
    the dataset. uint8 is the default because camera noise in uint16 compresses poorly.
    """
    if n_infected < 0 or n_mock < 0 or n_infected + n_mock == 0:
        raise ValueError(
            f"need at least one well and no negative counts, got n_infected={n_infected!r}, "
            f"n_mock={n_mock!r}"
        )
    root = Path(root)
    well_seeds = np.random.SeedSequence(seed).generate_state(n_infected + n_mock)
    classes = [True] * n_infected + [False] * n_mock
    paths, wells = [], []
    for position, (infected, well_seed) in enumerate(zip(classes, well_seeds), start=1):
        well = SyntheticWell(
            infected=infected,
            seed=int(well_seed),
            n_frames=n_frames,
            size=size,
            frame_interval_h=frame_interval_h,
            onset_h=onset_h,
            dtype=dtype,
            **look,
        )
        folder = "infected" if infected else "uninfected"
        path = root / folder / f"synthetic_{folder}_s{seed}_p{position}_t0-{n_frames - 1}.tif"
        write_stack(path, well.render(), "TYX", frame_interval_h, compression="zlib")
        paths.append(path)
        wells.append({"path": f"{folder}/{path.name}", "position": position, **asdict(well)})
    truth = {
        "generator": __name__,
        "onset_h": onset_h,
        "frame_interval_h": frame_interval_h,
        "n_frames": n_frames,
        "size": size,
        "seed": seed,
        "dtype": dtype,
        "wells": wells,
    }
    write_text_atomic(root / "dataset.json", json.dumps(truth, indent=2))
    return paths


def _render(well: SyntheticWell) -> np.ndarray:
    layout_rng, infection_rng, noise_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(well.seed).spawn(3)
    )
    cells = _cell_states(well, layout_rng, infection_rng)
    t_idx, c_idx = np.nonzero(cells["presence"] > 0)
    flat, body, halo = _soft_ellipses(
        *(cells[k][t_idx, c_idx] for k in ("y", "x", "semi_a", "semi_b", "theta")),
        t_idx,
        well.size,
    )
    state = {k: cells[k][t_idx, c_idx][:, None] for k in cells}
    alpha, rounding = state["presence"], state["rounding"]
    weights = (
        alpha * state["dark"] * (1.0 - rounding) * body,
        alpha * 0.12 * (1.0 + 0.8 * rounding) * (1.0 - state["detached"]) * halo,
        alpha * 0.3 * state["gain"] * state["brightening"] * body,
    )
    shape = (well.n_frames, well.size, well.size)
    dark, lit, bright = (
        np.bincount(flat.ravel(), w.ravel(), minlength=np.prod(shape)).reshape(shape)
        for w in weights
    )
    return _camera(dark, lit, bright, noise_rng, well)


def _cell_states(well: SyntheticWell, layout_rng, infection_rng) -> dict[str, np.ndarray]:
    """Per frame and cell (arrays of shape (T, N)): position, size, presence, infection."""
    size, hours = well.size, np.arange(well.n_frames) * well.frame_interval_h
    capacity = _CAPACITY_PER_128 * (size / 128) ** 2 * layout_rng.uniform(0.9, 1.1) * well.density
    n_cells = int(np.ceil(capacity))
    count = _cell_count(hours, capacity, layout_rng.uniform(*_START_FRACTION), well)
    traits = _cell_traits(layout_rng, n_cells, size, well.cell_scale)
    y, x = _drifting_positions(layout_rng, traits, well.n_frames, well.frame_interval_h, size)
    spread = 1.0 + 0.45 * (1.0 - np.exp(-hours / 30.0))[:, None]
    states = {
        "presence": np.clip(count[:, None] - np.arange(n_cells), 0.0, 1.0),
        "y": y,
        "x": x,
        "semi_a": traits["a"] * spread,
        "semi_b": traits["b"] * spread,
        "rounding": np.zeros_like(y),
        "brightening": np.zeros_like(y),
        "detached": np.zeros_like(y),
    }
    states.update(
        {k: np.broadcast_to(traits[k], y.shape) for k in ("theta", "dark", "gain")}
    )
    if well.infected:
        infected_at = _infection_hours(infection_rng, n_cells, count, hours, well.onset_h,
                                       well.latency_scale)
        since = hours[:, None] - infected_at
        detach_h = infection_rng.uniform(*_DETACH_AFTER_H, n_cells)
        states["rounding"] = rounding = np.clip(since / _ROUNDING_H, 0.0, 1.0)
        states["brightening"] = _smoothstep(since / _BRIGHTENING_H)
        states["detached"] = detached = np.clip((since - detach_h) / _DETACH_DURATION_H, 0.0, 1.0)
        for axis in ("semi_a", "semi_b"):
            rounded = states[axis] + (0.8 * traits["r"] - states[axis]) * rounding
            states[axis] = rounded + (_DEBRIS_RADIUS - rounded) * detached
    return states


def _camera(dark, lit, bright, rng, well: SyntheticWell) -> np.ndarray:
    """Cells on an uneven textured background, camera noise, quantised to the well's dtype."""
    size = dark.shape[-1]
    granules = np.clip(1.0 + 0.5 * _unit_noise(rng, (size, size), 0.8), 0.2, None)
    background = (
        _BACKGROUND
        + 0.04 * _unit_noise(rng, (size, size), size / 6)
        + 0.012 * _unit_noise(rng, (size, size), 1.0)
    )
    cells = -_saturate(dark, 0.3) + _saturate(lit, 0.15) + bright * granules
    image = background + well.contrast * cells
    image += well.illumination * (np.linspace(-0.5, 0.5, size) * 2 * _BACKGROUND)
    image += rng.normal(0.0, well.noise, image.shape)
    scale = DTYPE_FULL_SCALE[well.dtype]
    return np.clip(np.rint(image * scale), 0, scale).astype(well.dtype)


def _cell_count(hours, capacity, start_fraction, well: SyntheticWell):
    """Logistic growth in cell number; in infected wells growth stalls after the onset."""
    grown_h = hours
    if well.infected:
        after = np.maximum(hours - well.onset_h, 0.0)
        stalled = _STALL_AFTER_ONSET_H * (1.0 - np.exp(-after / _STALL_AFTER_ONSET_H))
        grown_h = np.minimum(hours, well.onset_h) + stalled
    log_odds = np.log(start_fraction / (1.0 - start_fraction)) + _GROWTH_PER_H * grown_h
    return capacity / (1.0 + np.exp(-log_odds))


def _cell_traits(rng, n_cells, size, scale=1.0):
    radius = rng.uniform(2.8, 4.0, n_cells) * scale
    elongation = rng.uniform(1.1, 1.45, n_cells)
    return {
        "r": radius,
        "a": radius * elongation,
        "b": radius / elongation,
        "theta": rng.uniform(0.0, np.pi, n_cells),
        "dark": rng.uniform(0.12, 0.2, n_cells),
        "gain": rng.uniform(0.8, 1.2, n_cells),
        "y0": rng.uniform(0.0, size, n_cells),
        "x0": rng.uniform(0.0, size, n_cells),
    }


def _drifting_positions(rng, cells, n_frames, frame_interval_h, size):
    """Slow random walk per cell, about half a pixel per half hour."""
    step = 0.5 * np.sqrt(frame_interval_h / 0.5)
    walk = np.cumsum(rng.normal(0.0, step, (2, n_frames, len(cells["r"]))), axis=1)
    return (cells["y0"] + walk[0]) % size, (cells["x0"] + walk[1]) % size


def _infection_hours(rng, n_cells, count, hours, onset_h, latency_scale=1.0):
    """Per cell: infected a random latency after the onset, or after it appears if later."""
    appears = np.interp(np.arange(n_cells), count, hours, left=0.0, right=np.inf)
    latency = (_LATENCY_MIN_H + rng.gamma(*_LATENCY_GAMMA, n_cells)) * latency_scale
    return np.maximum(appears, onset_h) + latency


def _soft_ellipses(cy, cx, semi_a, semi_b, theta, frame, size):
    """Flat pixel indices, soft body and halo weights of each (frame, cell) patch."""
    offsets = np.arange(-_PATCH_HALF, _PATCH_HALF + 1)
    oy, ox = (o.ravel() for o in np.meshgrid(offsets, offsets, indexing="ij"))
    iy, ix = np.rint(cy).astype(np.intp), np.rint(cx).astype(np.intp)
    f32 = np.float32
    dy = oy.astype(f32) - (cy - iy).astype(f32)[:, None]
    dx = ox.astype(f32) - (cx - ix).astype(f32)[:, None]
    cos, sin = np.cos(theta).astype(f32)[:, None], np.sin(theta).astype(f32)[:, None]
    a, b = semi_a.astype(f32)[:, None], semi_b.astype(f32)[:, None]
    u, v = (dx * cos + dy * sin) / a, (dy * cos - dx * sin) / b
    edge = (1.0 - np.sqrt(u * u + v * v)) * np.sqrt(a * b)  # ~ signed distance in pixels
    body = 1.0 / (1.0 + np.exp(-edge / f32(0.7)))
    halo = np.exp(-(((edge + f32(1.2)) / f32(0.9)) ** 2))
    flat = (frame[:, None] * size + (iy[:, None] + oy) % size) * size + (ix[:, None] + ox) % size
    return flat, body, halo


def _unit_noise(rng, shape, sigma):
    """Gaussian-filtered white noise rescaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / field.std()


def _saturate(x, cap):
    """Overlapping cells add up to at most ``cap``, like real optical density does."""
    return cap * (1.0 - np.exp(-x / cap))


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)
