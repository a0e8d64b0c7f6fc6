"""What a layer is to the plugin: the metadata keys it reads and writes, in one place.

Images the user opened are inputs, each with an id of its own (:data:`IMAGE_ID`); every
layer the plugin makes (probability, duration, class, tiles, onset maps, crops,
"label next" markers, frame-label markers) carries :data:`OUTPUT_OF`, the id of the image
it belongs to, and :data:`OUTPUT_KIND`, what it is, and is never offered or taken as an
input. Names are the user's to change: the plugin finds a layer's image, and an image's
layers, by id, never by name; the Shapes layer a regions prediction ran on is known by an
id of the same kind. The frame interval and onset of an image come with the
place they came from (file metadata, the checkpoint, or a default the user should check).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from napari.layers import Image

from ..core.targets import DEFAULT_FRAME_INTERVAL_H, DEFAULT_ONSET_H

# --- layer metadata keys ---------------------------------------------------------------
#: On an image the plugin served, and on the Shapes layer of a regions prediction: its id
#: (a name can be changed in the layer list).
IMAGE_ID = "infection_clock_image_id"
#: On every layer the plugin makes: the id of the image it belongs to, and what it is.
OUTPUT_OF = "infection_clock_output_of"
OUTPUT_KIND = "infection_clock_output_kind"
#: Hours between frames, and where that number came from ("metadata", "user", "default").
FRAME_INTERVAL_H = "frame_interval_h"
FRAME_INTERVAL_SOURCE = "frame_interval_source"
#: Infection onset in hours (samples and files that know it), and whether the well is infected.
ONSET_H = "onset_h"
INFECTED = "infected"
#: Hours of the first frame since the start of the experiment.
START_OFFSET_H = "start_offset_h"
#: The TIFF file an image layer shows (our reader, or a copy saved to a project folder).
SOURCE_PATH = "source_path"
#: Which channel of a multichannel file the layer shows: index, and name where the file
#: names it (what labels made on it train on, and what predictions record).
CHANNEL = "channel"
CHANNEL_DESC = "channel_desc"
N_FRAMES = "n_frames"
#: On a prediction's tiles layer: the run's table (every frame's rows, core.results), what
#: the writer saves (the layer's features are its tiles, one row per rectangle).
PREDICTION_TABLE = "infection_clock_prediction_table"

# where a time setting came from, as the docks say it
FROM_FILE = "file metadata"
FROM_CHECKPOINT = "checkpoint"
FROM_DEFAULT = "default"
FROM_LABELS = "the annotation dock"


def is_output(layer) -> bool:
    """Whether ``layer`` was made by the plugin (and so is no input)."""
    return OUTPUT_OF in layer.metadata


def image_id(image) -> str:
    """The id of an image layer (or of the Shapes layer a regions prediction ran on), given
    on first use; it stays when the layer is renamed."""
    return image.metadata.get(IMAGE_ID) or renew_image_id(image)


def renew_image_id(image) -> str:
    """A new id for ``image``: a duplicate of a layer (napari copies its metadata) is
    another image."""
    image.metadata[IMAGE_ID] = uuid.uuid4().hex
    return image.metadata[IMAGE_ID]


def output_metadata(image, kind: str) -> dict:
    """Metadata for a layer of ``kind`` the plugin makes for ``image``. Give it when the
    layer is created: napari selects a new layer at once, and the session asks then what
    it is."""
    return {OUTPUT_OF: image_id(image), OUTPUT_KIND: kind}


def is_output_of(layer, image, kind: str | None = None) -> bool:
    """Whether ``layer`` was made for ``image`` (and is of ``kind``, when given)."""
    meta = layer.metadata
    return (OUTPUT_OF in meta and meta[OUTPUT_OF] == image.metadata.get(IMAGE_ID)
            and (kind is None or meta.get(OUTPUT_KIND) == kind))


def output_layer(viewer, image, kind: str):
    """The layer of ``kind`` the plugin made for ``image``, or None."""
    return next((layer for layer in viewer.layers if is_output_of(layer, image, kind)), None)


def is_input_image(layer) -> bool:
    """A time-lapse the user opened: an Image with a time axis that the plugin did not make."""
    return isinstance(layer, Image) and layer.ndim >= 3 and not is_output(layer)


def input_images(viewer) -> list:
    """The viewer's input images, in layer-list order."""
    return [layer for layer in viewer.layers if is_input_image(layer)]


def image_with_id(viewer, key: str | None):
    """The input image of id ``key`` in ``viewer``, or None."""
    if key is None:
        return None
    return next((layer for layer in input_images(viewer)
                 if layer.metadata.get(IMAGE_ID) == key), None)


def image_of(viewer, layer):
    """The input image ``layer`` stands for: itself, or the image an output belongs to."""
    if layer is None:
        return None
    if is_input_image(layer):
        return layer
    return image_with_id(viewer, layer.metadata.get(OUTPUT_OF))


def image_in_view(viewer):
    """The image the user is looking at, or None and why.

    The active layer's image when it is visible (an output or crops layer stands for its
    image); else the only visible input image. With none or several visible and none
    selected, there is no answer: the caller refuses and shows the reason.
    """
    chosen = image_of(viewer, viewer.layers.selection.active)
    if chosen is not None and chosen.visible:
        return chosen, ""
    visible = [layer for layer in input_images(viewer) if layer.visible]
    if len(visible) == 1:
        return visible[0], ""
    if not visible:
        if input_images(viewer):
            return None, "no time-lapse image is visible: show the one to label"
        return None, "no time-lapse image: open one (File > Open) or a sample"
    names = ", ".join(f"'{layer.name}'" for layer in visible)
    return None, f"{len(visible)} images are visible ({names}): select the one to label in the layer list"


def drawn_over(viewer, image) -> list:
    """The visible input images napari draws over ``image`` (later in the layer list) where
    it lies, opaque enough to hide it: there the canvas shows their frames, not its."""
    layers = list(viewer.layers)
    if image not in layers:
        return []
    return [
        layer for layer in layers[layers.index(image) + 1:]
        if is_input_image(layer) and layer.visible and layer.opacity >= 0.5
        and layer.blending not in ("additive", "minimum") and _overlap(layer, image)
    ]


def _overlap(a, b) -> bool:
    """Whether layers ``a`` and ``b`` cover some of the same (y, x) in world coordinates."""
    (a_low, a_high), (b_low, b_high) = (
        np.asarray(layer.extent.world, dtype=float)[:, -2:] for layer in (a, b))
    return bool((a_low < b_high).all() and (b_low < a_high).all())


def layer_stack_path(layer) -> str | None:
    """The TIFF an image layer shows (set by our reader, or by saving it to a project)."""
    path = layer.metadata.get(SOURCE_PATH) or getattr(layer.source, "path", None)
    return str(Path(path).resolve()) if path else None


def memory_key(layer) -> str:
    """The key of the labels of an image with no file: ``memory:ID`` (its id, which a new
    name leaves as it is)."""
    return f"memory:{image_id(layer)}"


def annotation_key(layer) -> str:
    """The key of an image's labels in the session: its file, or :func:`memory_key`."""
    return layer_stack_path(layer) or memory_key(layer)


@dataclass(frozen=True)
class TimeSetting:
    """An image's frame interval and onset, with where each came from."""

    frame_interval_h: float
    interval_source: str
    onset_h: float
    onset_source: str

    @property
    def defaulted(self) -> list[str]:
        return [what for what, src in (("frame interval", self.interval_source),
                                       ("onset", self.onset_source)) if src == FROM_DEFAULT]

    def describe(self) -> str:
        """One line for the dock: values, origins, and a warning for defaults."""
        text = (f"{self.frame_interval_h:g} h/frame from {self.interval_source}; "
                f"onset {self.onset_h:g} h from {self.onset_source}")
        if self.defaulted:
            text = (f"⚠ {' and '.join(self.defaulted)} not known, default used: {text}. "
                    "Check them against your experiment")
        return text


def time_setting(layer, model_meta=None, labels=None) -> TimeSetting:
    """Frame interval and onset of ``layer``: what the user set for it in the annotation
    dock (``labels``, its AnnotationStore, where a value differs from the file's or the
    default), then file metadata, then the checkpoint (``model_meta``, a CheckpointMeta),
    else the defaults. One image has one clock, whichever dock shows it."""
    if labels is not None:
        base = time_setting(layer)
        interval, onset = labels.frame_interval_h, labels.onset_h
        own = time_setting(layer, model_meta)
        return TimeSetting(
            *((interval, FROM_LABELS) if interval != base.frame_interval_h
              else (own.frame_interval_h, own.interval_source)),
            *((onset, FROM_LABELS) if onset != base.onset_h
              else (own.onset_h, own.onset_source)))
    meta = layer.metadata if layer is not None else {}
    interval, interval_source = DEFAULT_FRAME_INTERVAL_H, FROM_DEFAULT
    if meta.get(FRAME_INTERVAL_H) and meta.get(FRAME_INTERVAL_SOURCE, "metadata") != "default":
        interval, interval_source = float(meta[FRAME_INTERVAL_H]), FROM_FILE
    elif model_meta is not None and "frame interval" not in model_meta.assumed:
        interval, interval_source = model_meta.time.frame_interval_h, FROM_CHECKPOINT
    onset, onset_source = DEFAULT_ONSET_H, FROM_DEFAULT
    if meta.get(ONSET_H) is not None:
        onset, onset_source = float(meta[ONSET_H]), FROM_FILE
    elif model_meta is not None and "onset" not in model_meta.assumed:
        onset, onset_source = model_meta.time.onset_h, FROM_CHECKPOINT
    return TimeSetting(interval, interval_source, onset, onset_source)
