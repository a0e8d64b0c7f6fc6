"""Regenerate the user guide's screenshots from a real napari viewer.

    xvfb-run -a python docs/make_screenshots.py [--checkpoint MODEL.pt]

Without ``--checkpoint`` a small resnet18 is first trained for a minute on synthetic
wells (CPU), so the pictures show a model that has learnt something. Images are saved
under docs/images/ with a 256-colour palette to stay small.
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
    from napari_infection_clock.core.checkpoint import CheckpointMeta
    from napari_infection_clock.core.dataset import ItemDataset
    from napari_infection_clock.core.items import FramePolicy, research_items, split_by_group
    from napari_infection_clock.core.model import ModelConfig, build_model
    from napari_infection_clock.core.preprocess import Preprocessing
    from napari_infection_clock.core.synthetic import write_research_dataset
    from napari_infection_clock.core.targets import TimePolicy
    from napari_infection_clock.core.trainer import TrainConfig, run_training

    write_research_dataset(folder / "data", n_infected=6, n_mock=6, n_frames=48, size=64, seed=5)
    train, val, _ = split_by_group(research_items(folder / "data", FramePolicy()), 0.2, 0.2)
    prep = Preprocessing(image_size=64)
    config = ModelConfig(arch="resnet18", hidden_dim=64)
    meta = CheckpointMeta(model=config, preprocessing=prep, time=TimePolicy())
    path = folder / "demo.pt"
    run_training(
        build_model(config),
        ItemDataset(train, prep, augment=True),
        ItemDataset(val, prep),
        TrainConfig(epochs=8, batch_size=32, lr=1e-3, device="cpu"),
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
    args = parser.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_infection_clock.ui.overlays import layer_name
    from napari_infection_clock.ui.plot_widget import TimeSeriesPlot
    from napari_infection_clock.ui.prediction_widget import MODE_TILES, PredictionWidget

    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or demo_checkpoint(Path(tmp))
        viewer = napari.Viewer(show=True)
        viewer.window._qt_window.resize(1500, 950)
        [image] = viewer.open_sample(PLUGIN, "infected")
        predict = PredictionWidget(viewer)
        viewer.window.add_dock_widget(predict, name="Predict infection")
        plot = TimeSeriesPlot(viewer)
        viewer.window.add_dock_widget(plot, name="Infection time-series plot", area="right")
        predict.checkpoint.value = checkpoint
        predict.mode.value = MODE_TILES
        predict.tile_size.value = 64
        predict.device.value = "cpu"
        viewer.dims.set_point(0, 30)

        done: list[str] = []
        predict.finished.connect(done.append)
        predict.run()
        while not done:
            QApplication.processEvents()
            time.sleep(0.01)
        print(done[0])

        duration = viewer.layers[layer_name(image.name, "duration")]
        probability = viewer.layers[layer_name(image.name, "probability")]
        viewer.layers.selection.active = image
        duration.visible = False
        settle()
        save_small(viewer.screenshot(canvas_only=False, flash=False), "prediction.png")
        duration.visible, probability.visible = True, False
        settle()
        save_small(viewer.screenshot(canvas_only=True, flash=False), "duration.png")
        save_small(grab(plot), "plot.png")
        save_small(grab(predict.native), "prediction-widget.png")
        viewer.close()


def settle(seconds: float = 0.5) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)


if __name__ == "__main__":
    main()
