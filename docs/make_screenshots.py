"""Regenerate the user guide's screenshots from a real napari viewer.

    xvfb-run -a python docs/make_screenshots.py [--checkpoint MODEL.pt]

Without ``--checkpoint`` a small resnet18 is first trained for a few minutes on synthetic
wells (CPU), so the pictures show a model that has learnt something. The docks are opened
from the Plugins menu, in napari's default (dark) theme, as a user meets them; the mouse
rests on a tile so that the readout shows. Images are saved under docs/images/ with a
256-colour palette to stay small.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

IMAGES = Path(__file__).resolve().parent / "images"
PLUGIN = "napari-infection-clock"


def demo_checkpoint(folder: Path) -> Path:
    """Train a small model on synthetic wells; return its checkpoint."""
    import torch

    from napari_infection_clock.core.checkpoint import CheckpointMeta
    from napari_infection_clock.core.dataset import ItemDataset
    from napari_infection_clock.core.items import FramePolicy, research_items, split_by_group
    from napari_infection_clock.core.model import ModelConfig, build_model
    from napari_infection_clock.core.preprocess import Preprocessing
    from napari_infection_clock.core.synthetic import write_research_dataset
    from napari_infection_clock.core.targets import TimePolicy
    from napari_infection_clock.core.trainer import TrainConfig, run_training

    torch.manual_seed(0)  # the same demo model on every run
    write_research_dataset(folder / "data", n_infected=4, n_mock=4, n_frames=32, size=64, seed=5)
    train, val, _ = split_by_group(research_items(folder / "data", FramePolicy()), 0.2, 0.2)
    prep = Preprocessing(image_size=48)
    config = ModelConfig(arch="resnet18", hidden_dim=32)
    meta = CheckpointMeta(model=config, preprocessing=prep, time=TimePolicy())
    path = folder / "demo.pt"
    run_training(
        build_model(config),
        ItemDataset(train, prep, augment=True),
        ItemDataset(val, prep),
        TrainConfig(epochs=6, batch_size=32, lr=1e-3, device="cpu"),
        meta,
        checkpoint_path=path,
    )
    return path


def save_small(rgba: np.ndarray, name: str) -> Path:
    """Save an (H, W, 3|4) uint8 array as a palette PNG."""
    path = IMAGES / name
    PILImage.fromarray(np.ascontiguousarray(rgba[..., :3])).quantize(colors=256).save(
        path, optimize=True
    )
    print(f"{path} ({path.stat().st_size // 1024} KB)")
    return path


def grab(widget) -> np.ndarray:
    from qtpy.QtGui import QImage

    image = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB32)  # BGRA bytes
    ptr = image.constBits()
    ptr.setsize(image.sizeInBytes())
    bgra = np.frombuffer(ptr, np.uint8).reshape(image.height(), image.bytesPerLine() // 4, 4)
    return bgra[:, : image.width(), [2, 1, 0]].copy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, help="model to predict with")
    parser.add_argument("--tile-size", type=int, default=64,
                        help="tile side in pixels (the scale the model was trained at)")
    args = parser.parse_args()

    import napari
    from qtpy.QtCore import QPoint
    from qtpy.QtTest import QTest
    from qtpy.QtWidgets import QApplication

    from napari_infection_clock.ui.overlays import layer_name
    from napari_infection_clock.ui.prediction_widget import MODE_TILES

    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or demo_checkpoint(Path(tmp))
        viewer = napari.Viewer(show=True)
        viewer.window._qt_window.resize(1500, 950)
        [image] = viewer.open_sample(PLUGIN, "infected")
        predict = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict infection")[1]
        plot = viewer.window.add_plugin_dock_widget(PLUGIN, "Infection time-series plot")[1]
        predict.checkpoint.value = checkpoint
        predict.mode.value = MODE_TILES
        predict.tile_size.value = args.tile_size
        predict.device.value = "cpu"
        viewer.dims.set_point(0, 30)

        done: list[str] = []
        predict.finished.connect(done.append)
        predict.run_button.native.click()
        while not done:
            QApplication.processEvents()
            time.sleep(0.01)
        print(done[0])

        viewer.layers.selection.active = image
        close_toasts(viewer)
        settle()
        # the mouse on the tile in the second row and column: the readout says its values
        canvas = viewer.window._qt_viewer.canvas
        x, y = (canvas.view.transform * canvas.view.scene.transform).map([args.tile_size * 3 // 2] * 2)[:2]
        QTest.mouseMove(canvas.native, QPoint(round(x), round(y)))
        settle()
        save_small(viewer.screenshot(canvas_only=False, flash=False), "prediction.png")
        predict.swap_button.native.click()  # the duration overlay instead
        viewer.reset_view()  # the whole image in the canvas alone
        settle()
        assert viewer.layers[layer_name(image.name, "duration")].visible
        save_small(viewer.screenshot(canvas_only=True, flash=False), "duration.png")
        save_small(grab(plot), "plot.png")
        save_small(grab(predict.native.widget()), "prediction-widget.png")  # the whole form
        viewer.close()


def close_toasts(viewer) -> None:
    """Close napari's notification toasts, which would cover the canvas."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()


def settle(seconds: float = 0.5) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)


if __name__ == "__main__":
    main()
