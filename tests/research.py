"""The research pipeline's model and checkpoint layout (SPEC 4 and 8), written for the tests
independently of the package, so loading its files is checked against the real thing."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from torch import nn
from torchvision import models


class ResearchMultitask(nn.Module):
    def __init__(self, name="resnet18", hidden=256, dropout=0.2, cls_conditioning=False):
        super().__init__()
        self.backbone = getattr(models, name)(weights=None)
        width = self.backbone.fc.in_features
        self.backbone.fc = nn.Identity()
        self.cls_conditioning = cls_conditioning

        def head(n_in, n_out):
            if hidden > 0:
                return nn.Sequential(
                    nn.Dropout(dropout),
                    nn.Linear(n_in, hidden),
                    nn.ReLU(),
                    nn.Dropout(dropout),
                    nn.Linear(hidden, n_out),
                )
            return nn.Sequential(nn.Dropout(dropout), nn.Linear(n_in, n_out))

        self.classifier = head(width, 2)
        self.regressor = head(width + 2 if cls_conditioning else width, 1)

    def forward(self, x):
        f = self.backbone(x)
        logits = self.classifier(f)
        r_in = torch.cat([f, logits], 1) if self.cls_conditioning else f
        return logits, self.regressor(r_in).squeeze(1)


def research_config(
    name="resnet18",
    hidden=256,
    dropout=0.2,
    cls_conditioning=False,
    image_size=64,
    frames_per_hour=2.0,
    onset=2.0,
    clamp=(0.0, 48.0),
):
    return {
        "model": {
            "name": name,
            "pretrained": True,
            "num_classes": 2,
            "dropout": dropout,
            "train_backbone": True,
            "hidden_dim": hidden,
            "use_cls_conditioning": cls_conditioning,
        },
        "data": {
            "transforms": {
                "image_size": image_size,
                "mean": [0.5, 0.5, 0.5],
                "std": [0.25, 0.25, 0.25],
                "horizontal_flip": True,
                "vertical_flip": True,
                "rotation": 15,
            },
            "frames": {
                "frames_per_hour": frames_per_hour,
                "infected_window_hours": [1, 48],
                "uninfected_window_hours": [0, 48],
                "infected_stride": 1,
                "uninfected_stride": 1,
            },
        },
        "multitask": {
            "infection_onset_hour": onset,
            "clamp_range": list(clamp),
            "classification_weight": 1.0,
            "regression_weight": 1.0,
        },
    }


def research_val_metrics() -> dict:
    """Validation metrics as the research scripts store them: straight from sklearn and
    numpy, so numpy float64/float32 scalars, never Python floats."""
    true_class = np.array([0, 0, 1, 1, 1])
    p_infected = np.array([0.1, 0.6, 0.4, 0.8, 0.9], dtype=np.float32)
    true_time = np.array([3.0, 7.5, 12.0, 20.0, 30.0], dtype=np.float32)
    pred_time = np.array([2.5, 8.0, 11.0, 22.0, 29.0], dtype=np.float32)
    return {
        "roc_auc": np.float64(roc_auc_score(true_class, p_infected)),  # as older sklearn gives it
        "accuracy": np.mean((p_infected > 0.5) == true_class),  # numpy float64
        "mae": np.abs(pred_time - true_time).mean(),  # numpy float32
        "n_items": np.int64(len(true_class)),
    }


def save_research_checkpoint(path, model: ResearchMultitask, config: dict, variant="model_state"):
    """Both layouts the research scripts write (SPEC 8), numpy scalars included."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    metrics = research_val_metrics()
    payload = {
        variant: model.state_dict(),
        "config": config,
        "optimizer_state": opt.state_dict(),
        "scaler_state": {},
        "epoch": 7,
        "val_metrics": metrics,
    }
    if variant == "model_state_dict":
        history = np.array([0.91, 0.97, 0.95])
        payload.update({
            "epoch": np.argmax(history),  # numpy int64
            "fold": np.arange(5)[2],  # numpy int64, as KFold's indices give it
            "best_metrics": {"auc": history.max(), "mae": metrics["mae"]},
            "infected_window": [np.float64(1.0), 48],
        })
    torch.save(payload, path)


def research_preprocess(frame: np.ndarray, size: int) -> torch.Tensor:
    f = frame.astype(np.float64)
    lo, hi = f.min(), f.max()
    f = (f - lo) / (hi - lo) if hi > lo else np.zeros_like(f)
    u8 = (f * 255).astype(np.uint8)
    rgb = np.repeat(u8[..., None], 3, axis=2) if u8.ndim == 2 else u8
    img = Image.fromarray(rgb).resize((size, size), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return torch.from_numpy((x - 0.5) / 0.25)


def research_predict(model: ResearchMultitask, frame: np.ndarray, size: int, clamp=(0, 48)):
    model.eval()
    with torch.no_grad():
        logits, t = model(research_preprocess(frame, size)[None])
    return torch.softmax(logits, 1)[0, 1].item(), t.clamp(*clamp)[0].item()


def varied_frames(n=12, size=96, seed=1) -> list[np.ndarray]:
    """uint16 frames from flat to strongly textured, so a network's features differ."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    return [
        (1000 + 500 * np.sin(x / (3 + i)) * np.cos(y / (5 + i / 2))
         + rng.normal(0, 50 + 20 * i, (size, size))).astype(np.uint16)
        for i in range(n)
    ]


def spread_heads(model: ResearchMultitask, x: torch.Tensor, logit_range=(-4.0, 4.0),
                 time_range=(0.0, 30.0)) -> None:
    """Scale the heads' last layers so that, over the inputs ``x``, the infected logit
    margin and the time spread over the given ranges (a random network's heads give nearly
    the same output for every frame, which hides any rounding)."""

    def stretch(head, inp, lo, hi, rows):
        out = head(inp)[:, rows[0]] - (head(inp)[:, rows[1]] if len(rows) > 1 else 0)
        scale = (hi - lo) / (out.max() - out.min())
        last = head[-1]
        last.weight.mul_(scale)
        last.bias.mul_(scale)
        last.bias[rows[0]] += lo - out.min() * scale

    model.eval()
    with torch.no_grad():
        features = model.backbone(x)
        stretch(model.classifier, features, *logit_range, rows=(1, 0))
        logits = model.classifier(features)
        r_in = torch.cat([features, logits], 1) if model.cls_conditioning else features
        stretch(model.regressor, r_in, *time_range, rows=(0,))
