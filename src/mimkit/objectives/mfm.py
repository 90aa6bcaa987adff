"""Masked frequency modelling, MFM (Xie et al., 2023): hide part of the spectrum, not patches.

1. Take the 2-D Fourier transform of the (normalised) image and hide a disc of radius r around
   the zero frequency (a high-pass input) or everything outside it (a low-pass input); each
   sample draws low- or high-pass with probability 1/2. The inverse transform is the input.
2. The encoder sees every patch of that filtered image: no tokens are dropped, no mask token.
3. A linear head maps every token back to its patch's pixels, giving a full image.
4. The loss lives in the frequency domain: the focal frequency loss (Jiang et al., 2021) between
   the prediction's spectrum and the original image's, on the hidden frequencies only. Each
   frequency's squared error is weighted by its own (detached) error magnitude, normalised per
   image so the hardest hidden frequency weighs 1 (errors at frequencies the input kept change
   neither the loss nor its weights).

The default radius is the paper's 16 frequencies on 224-pixel images, as a fraction of the side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mimkit.errors import ConfigError
from mimkit.masking import MaskingConfig
from mimkit.models.config import ModelConfig
from mimkit.models.vit import VisionTransformer
from mimkit.objectives.base import MethodOutput, MethodSettings
from mimkit.patches import unpatchify


@dataclass
class MFMSettings(MethodSettings):
    name = "mfm"
    freq_radius: float = 16 / 224  # radius of the hidden disc, as a fraction of the side

    def check(self, model: ModelConfig) -> None:
        if not 0.0 < self.freq_radius < 0.5:
            raise ConfigError(f"method.freq_radius must be in (0, 0.5), got {self.freq_radius}")


@dataclass(frozen=True)
class FrequencyMask:
    """Which half of the spectrum each sample hides: (B,) bool, True = low-pass input."""

    lowpass: torch.Tensor

    def select(self, rows: slice | torch.Tensor) -> FrequencyMask:
        return FrequencyMask(self.lowpass[rows])


def centred_disc(hw: tuple[int, int], radius: float, device: torch.device | str) -> torch.Tensor:
    """(H, W) bool, True inside the disc of `radius` around zero frequency, in fft2's layout."""
    fy = torch.fft.fftfreq(hw[0], device=device) * hw[0]  # integer frequencies, 0 first
    fx = torch.fft.fftfreq(hw[1], device=device) * hw[1]
    return fy[:, None] ** 2 + fx[None, :] ** 2 <= radius**2


def hidden_frequencies(mask: FrequencyMask, hw: tuple[int, int], radius: float) -> torch.Tensor:
    """(B, 1, H, W) float, 1 at the frequencies a sample's input does not contain."""
    disc = centred_disc(hw, radius, mask.lowpass.device)
    low = mask.lowpass[:, None, None]
    return torch.where(low, ~disc, disc)[:, None].float()


def filter_images(images: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """The images with the `hidden` frequencies removed (real part of the inverse transform)."""
    spectrum = torch.fft.fft2(images.float(), norm="ortho")
    return torch.fft.ifft2(spectrum * (1 - hidden), norm="ortho").real.to(images.dtype)


def focal_frequency_loss(
    pred: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor, alpha: float = 1.0
) -> torch.Tensor:
    """Weighted squared spectrum error on the `hidden` frequencies, averaged over them."""
    diff = torch.fft.fft2(pred.float(), norm="ortho") - torch.fft.fft2(target.float(), norm="ortho")
    squared = diff.real**2 + diff.imag**2
    hidden = hidden.expand_as(squared)
    with torch.no_grad():  # focal weights, normalised over the hidden frequencies only
        weight = squared.sqrt() ** alpha * hidden
        weight = weight / weight.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return (weight * squared * hidden).sum() / hidden.sum().clamp_min(1.0)


class MaskedFrequencyModel(nn.Module):
    reconstructs_pixels = True  # pictures: the filtered input and the predicted image

    def __init__(
        self,
        cfg: ModelConfig,
        masking: MaskingConfig | None = None,
        settings: MFMSettings | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.masking = masking  # unused: MFM hides frequencies, not patches
        self.settings = settings or MFMSettings()
        self.encoder = VisionTransformer(cfg)
        self.head = nn.Linear(cfg.embed_dim, cfg.patch_dim)
        self.radius = self.settings.freq_radius * min(cfg.image_hw)

    def draw_mask(
        self, batch: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> FrequencyMask:
        """Low- or high-pass input, drawn per sample with probability 1/2."""
        return FrequencyMask(torch.rand(batch, device=device, generator=generator) < 0.5)

    def forward(
        self,
        images: torch.Tensor,
        mask: FrequencyMask | None = None,
        generator: torch.Generator | None = None,
    ) -> MethodOutput:
        mask = mask if mask is not None else self.draw_mask(len(images), images.device, generator)
        hidden = hidden_frequencies(mask, self.cfg.image_hw, self.radius)
        tokens = self.encoder(filter_images(images, hidden))
        patches = self.head(tokens[:, self.encoder.num_prefix_tokens :])
        pred = unpatchify(patches, self.cfg.patch_shape, self.cfg.grid_shape, self.cfg.in_chans)
        return MethodOutput(focal_frequency_loss(pred, images, hidden), pred, mask)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, mask: FrequencyMask) -> dict[str, torch.Tensor]:
        """The input the encoder saw, the prediction, and the input's spectrum completed with
        the predicted hidden frequencies (the analogue of MAE's pasted image)."""
        was_training = self.training
        self.eval()
        try:
            pred = self.forward(images, mask=mask).pred.float()
        finally:
            self.train(was_training)
        hidden = hidden_frequencies(mask, self.cfg.image_hw, self.radius)
        pasted = filter_images(images.float(), hidden) + filter_images(pred, 1 - hidden)
        return {"masked": filter_images(images, hidden), "reconstruction": pred, "pasted": pasted}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(images)
