"""Which colorbars the canvas shows, and what each one is.

napari draws the colorbar of every visible layer that has one, side by side in the
canvas's top right corner, without a title: after five predicted images, five unlabelled
0..1 bars. Only the continuous overlays of the image in view
(:func:`.layer_roles.image_in_view`; all of them while there is none) show theirs, each
beside its layer's name (napari's own layer-name overlay, in the same corner: the image,
the quantity, and hours for a duration or onset).
"""

from __future__ import annotations

from .layer_roles import OUTPUT_KIND, OUTPUT_OF, image_id, image_in_view

#: The overlays with a colour scale, shown one at a time.
CONTINUOUS = ("probability", "duration", "onset")


def _continuous(layer) -> bool:
    return layer.metadata.get(OUTPUT_KIND) in CONTINUOUS


def wanted(viewer, layer) -> bool:
    """Whether ``layer``'s colorbar is for the canvas: it shows the image in view, or no
    image is in view (several visible, none selected)."""
    image, _ = image_in_view(viewer)
    return image is None or layer.metadata.get(OUTPUT_OF) == image_id(image)


def _name_of(layer):
    """``layer``'s name overlay (napari 0.6 on; None before)."""
    return getattr(layer, "name_overlay", None)


def make_name(layer) -> None:
    """Make ``layer``'s name overlay (napari makes its visual when it is first visible:
    done while the layer is hidden, nothing is painted), beside its colorbar."""
    name = _name_of(layer)
    if name is not None:
        name.position = "top_right"
        name.visible = True


def show_named(layer, shown: bool) -> None:
    """``layer``'s colorbar and its name on the canvas, or neither (napari draws them only
    while the layer itself is visible)."""
    layer.colorbar.visible = shown
    name = _name_of(layer)
    if name is not None:
        name.visible = shown


def show_for_image_in_view(viewer) -> None:
    """The image in view changed: its overlays' colorbars are the ones shown."""
    for layer in viewer.layers:
        if _continuous(layer):
            show_named(layer, wanted(viewer, layer))
