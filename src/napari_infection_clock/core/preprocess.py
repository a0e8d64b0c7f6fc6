"""SPEC 5 preprocessing as tensor operations, shared by training, prediction and the CLI.

It must match the research pipeline for its checkpoints to work: per-frame min-max to
[0, 1], quantised to uint8, grayscale replicated to 3 channels, bilinear resize, then
normalisation with the checkpoint's mean and std.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

RESEARCH_MEAN = (0.5, 0.5, 0.5)
RESEARCH_STD = (0.25, 0.25, 0.25)


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects of its input; stored in every checkpoint."""

    image_size: int = 512
    mean: tuple[float, float, float] = RESEARCH_MEAN
    std: tuple[float, float, float] = RESEARCH_STD

    def __post_init__(self):
        if int(self.image_size) < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {self.image_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three values each, std positive")


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """(B, H, W) or (B, H, W, 3) of any dtype -> (B, C, H, W) uint8, min-max per frame.

    C is 1 for grayscale (replicated later) and 3 for RGB. NaN and inf count as the frame
    minimum; a constant frame becomes all zeros.
    """
    if frames.ndim == 3:
        frames = frames.unsqueeze(-1)
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3):
        raise ValueError(
            f"expected frames shaped (B, H, W) or (B, H, W, 3), got {tuple(frames.shape)}"
        )
    x = frames.to(torch.float32)
    flat = x.flatten(1)
    if frames.dtype.is_floating_point:
        finite = torch.isfinite(x)
        big = torch.finfo(torch.float32).max
        lo = torch.where(finite.flatten(1), flat, big).amin(dim=1)
        hi = torch.where(finite.flatten(1), flat, -big).amax(dim=1)
        lo = torch.where(lo > hi, torch.zeros_like(lo), lo)  # frame with no finite value
        x = torch.where(finite, x, lo.view(-1, 1, 1, 1))
    else:  # integers are always finite: skip the masks (the hot path for camera data)
        lo, hi = flat.aminmax(dim=1)
    span = (hi - lo).view(-1, 1, 1, 1)
    # A true division, not a multiplication by 1/span: the research pipeline divides, and
    # the reciprocal rounds differently often enough to change some truncated uint8 values.
    x = torch.where(span > 0, (x - lo.view(-1, 1, 1, 1)) / span.clamp_min(1e-30), 0.0)
    # Truncation, as numpy's astype(uint8) does in the research pipeline.
    return (x.clamp(0, 1) * 255).to(torch.uint8).permute(0, 3, 1, 2)


def preprocess(frames: torch.Tensor, prep: Preprocessing, augment=None) -> torch.Tensor:
    """Raw frames or crops -> normalised (B, 3, S, S) float32 model input, on their device.

    ``augment`` (a torchvision transform) acts on the resized uint8 image, before
    normalisation, as in the research pipeline, so rotation corners fill with black.
    Grayscale is resized as one channel and replicated afterwards: the channels are
    identical, so this gives the same pixels for a third of the work.
    """
    u8 = to_uint8(frames)
    size = int(prep.image_size)
    if u8.shape[-2:] != (size, size):
        u8 = TF.resize(
            u8.contiguous(),
            [size, size],
            interpolation=v2.InterpolationMode.BILINEAR,
            antialias=True,
        )
    u8 = u8.expand(-1, 3, -1, -1)
    if augment is not None:
        u8 = augment(u8.contiguous())
    x = u8.to(torch.float32).div_(255.0)
    return TF.normalize(x, list(prep.mean), list(prep.std))


def training_augmentation(kind: str = "spec") -> v2.Compose | None:
    """The training augmentation ``kind`` (see :data:`.recipes.AUGMENTATIONS`), or None.

    ``spec`` is SPEC 5's: random flips and a rotation of up to 15 degrees. ``microscopy``
    adds what differs between microscopes and wells: a scale jitter of the image, then,
    on the intensities, a gain and an offset, contrast, gamma, blur and camera noise. Both
    act on the resized uint8 image and return one.
    """
    if kind == "none":
        return None
    flips = [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    if kind == "spec":
        return v2.Compose([*flips, v2.RandomRotation(15, interpolation=v2.InterpolationMode.BILINEAR)])
    if kind != "microscopy":
        raise ValueError(f"augmentation must be spec, microscopy or none, got {kind!r}")
    return v2.Compose(
        [
            *flips,
            v2.RandomAffine(15, scale=(0.8, 1.25), interpolation=v2.InterpolationMode.BILINEAR),
            v2.ToDtype(torch.float32, scale=True),
            IntensityJitter(),
            v2.RandomApply([v2.ColorJitter(contrast=0.3)], p=0.5),
            v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.2))], p=0.3),
            v2.RandomApply([CameraNoise(0.03)], p=0.5),
            v2.ToDtype(torch.uint8, scale=True),
        ]
    )


class IntensityJitter(torch.nn.Module):
    """Random gain, offset and gamma of a [0, 1] float image (v2 has no transform for them).

    The same draw for every channel, so replicated grayscale stays grayscale.
    """

    def __init__(self, gain=(0.7, 1.3), offset=(-0.1, 0.1), gamma=(0.7, 1.4)):
        super().__init__()
        self.gain, self.offset, self.gamma = gain, offset, gamma

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        def draw(low_high):
            low, high = low_high
            return low + (high - low) * torch.rand(()).item()

        out = image.clamp(0, 1) ** draw(self.gamma)
        return (out * draw(self.gain) + draw(self.offset)).clamp_(0, 1)


class CameraNoise(torch.nn.Module):
    """Gaussian noise of a [0, 1] float image, the same in every channel (v2.GaussianNoise
    draws per channel, which would colour replicated grayscale)."""

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = sigma

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        noise = torch.randn_like(image[..., :1, :, :]) * self.sigma
        return (image + noise).clamp_(0, 1)


def to_device(raw: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy raw pixels to ``device`` without blocking (from pinned memory on CUDA).

    uint16, the usual camera type, travels as int16 bits and is widened on the device,
    so the copy stays half the size of an int32 one and needs no unsigned kernels there.
    """
    if raw.dtype == torch.uint16:
        bits = raw.view(torch.int16).to(device, non_blocking=True)
        return bits.to(torch.int32).bitwise_and_(0xFFFF)
    return raw.to(device, non_blocking=True)
