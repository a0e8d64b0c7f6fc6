"""The plugin as a user meets it, in a fresh process: napari first, then the docks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from napari_infection_clock.core.annotations import open_annotations

from .research import ResearchMultitask, research_config, save_research_checkpoint

SCRIPT = Path(__file__).with_name("user_session.py")


def run_session(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    # the display is pytest-xvfb's (DISPLAY is inherited): a real X server and Mesa's
    # OpenGL, where an LLVM clash with the driver shows as a segmentation fault
    assert os.environ.get("DISPLAY"), "needs a display (pytest-xvfb)"
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_a_whole_session_after_the_viewer(tmp_path):
    """Every dock opens from the Plugins menu after the viewer; then samples from File >
    Open Sample, predict with a research checkpoint, label with the keys and buttons into a
    project folder, retrain one epoch heads-only, use the new model, evaluate, rank, predict
    once more and close napari while it predicts; then the process ends with 0, no thread
    of the plugin still runs when Python exits (one rendering a figure's text aborted one
    exit in eight: "terminate called without an active exception"; a prediction under way
    at exit, most of them), and the project folder holds what the user made.
    (Opening every dock is the session's first step: a fresh napari of its own for it alone
    repeated that step.)"""
    checkpoint = tmp_path / "research.pt"
    torch.manual_seed(0)
    save_research_checkpoint(checkpoint, ResearchMultitask("resnet18"),
                             research_config(image_size=32))
    proc = run_session(str(checkpoint), str(tmp_path))
    assert proc.returncode == 0, (
        f"exit {proc.returncode} (-11 is a segmentation fault)\n{proc.stdout}\n"
        f"{proc.stderr[-4000:]}"
    )
    assert "opened: 6 docks" in proc.stdout, proc.stdout
    assert "running at exit" not in proc.stdout, proc.stdout
    assert proc.stdout.rstrip().endswith("closed"), proc.stdout
    assert (tmp_path / "retrained.pt").is_file()

    # what a restart finds: each image with its labels, and nothing the plugin made
    project = tmp_path / "project"
    tifs = sorted(p.name for p in project.glob("*.tif"))
    assert tifs == ["infected_synthetic.tif", "mock_synthetic.tif"], sorted(project.iterdir())
    frames = {}
    for tif in tifs:
        store, sidecar = open_annotations(project / tif, 48, project_dir=project)
        assert sidecar.is_file(), sidecar
        frames[tif] = store.frames
    assert frames["mock_synthetic.tif"] == dict.fromkeys(range(48), "uninfected")
    assert frames["infected_synthetic.tif"] == {
        0: "uninfected", 1: "uninfected", **dict.fromkeys(range(3, 48), "infected")
    }


def test_the_docks_open_while_torch_is_still_loading():
    """Opening the first dock imported torch and torchvision on the GUI thread: napari froze
    8-11 s (2 cores) before the dock showed. Here torch cannot load on any other thread until
    every dock is open: they all open, torch is not loaded by then, and once a thread of the
    plugin's has loaded it the device pickers offer what torch found. torch's libraries are
    open before its import runs: opening them there held the GIL (GUI stalls of 0.5-1.1 s)."""
    proc = run_session("--torch-held", timeout=300)
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    )
    assert "opened: 6 docks" in proc.stdout, proc.stdout
    assert "torch loaded while the docks opened: False" in proc.stdout, proc.stdout
    loaded = next(line for line in proc.stdout.splitlines() if line.startswith("devices once"))
    assert "'cpu'" in loaded.split("and")[0] and "'cpu'" in loaded.split("and")[1], loaded
    assert "MainThread" not in loaded.split("torch imported by")[1], loaded
    predict_devices = loaded.split("devices once torch loaded: ")[1].split(" and ")[0]
    assert f"devices after an image was opened: {predict_devices}" in proc.stdout, proc.stdout
    assert "torch's libraries open before its import ran: [True]" in proc.stdout, proc.stdout


def test_removing_a_predicted_image_with_the_trash_button(tmp_path):
    """After a tile-grid prediction, the image goes with the trash button, its outputs follow
    in the next turn, and napari does not crash: napari deletes a removed layer's GL objects
    outside a paint, in whatever GL context is current; unless the plugin makes the canvas's
    own context current first, vispy's next draws segfaulted on Mesa (issue 9)."""
    checkpoint = tmp_path / "research.pt"
    torch.manual_seed(0)
    save_research_checkpoint(checkpoint, ResearchMultitask("resnet18"),
                             research_config(image_size=32))
    proc = subprocess.run([sys.executable, str(SCRIPT.with_name("remove_after_prediction.py")),
                           str(checkpoint)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (
        f"exit {proc.returncode} (-11 is a segmentation fault)\n{proc.stdout}\n{proc.stderr[-3000:]}"
    )
    assert "done: 4 frames predicted" in proc.stdout, proc.stdout
    assert "left: []" in proc.stdout, proc.stdout
