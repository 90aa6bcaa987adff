"""JPEG decoding on the GPU for image folders (`data.decode: cpu | gpu | auto`).

`cpu` (the default) decodes and resizes every image with PIL in the DataLoader workers.
`gpu` reads each file's bytes in the workers and decodes the JPEGs of a batch at once with
`torchvision.io.decode_jpeg(device="cuda")` (nvJPEG), resized on the device (bicubic,
antialiased): the workers only read files, so a few cores can feed a fast GPU. Files that are
not JPEG (PNG, ...) are decoded by PIL in the workers as before. `auto` is `gpu` where it can
run and `cpu` elsewhere, silently; `gpu` asked where it cannot run (no CUDA device, or no
torchvision: `pip install 'mimkit[gpu-decode]'`) prints one line and decodes on the CPU.

GPU-decoded pixels differ from PIL's by a few levels (another IDCT, another resampler), so a
run is reproducible with the same `data.decode`, not across the two.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from mimkit.data.config import DECODE_MODES
from mimkit.data.folder import ImageFolderDataset
from mimkit.errors import ConfigError, DataError

log = logging.getLogger(__name__)
JPEG_MAGIC = b"\xff\xd8\xff"


def _decode_jpeg():
    """torchvision's batched decoder, or None where it is missing."""
    try:
        from torchvision.io import decode_jpeg  # optional dependency: mimkit[gpu-decode]
    except ImportError:
        return None
    return decode_jpeg


def gpu_decode_problem(device: torch.device) -> str | None:
    """Why JPEGs cannot be decoded on `device` here, or None when they can."""
    if device.type != "cuda":
        return f"the run's device is {device.type}, not CUDA"
    if _decode_jpeg() is None:
        return "torchvision is not installed (pip install 'mimkit[gpu-decode]')"
    return None


def resolve_decode(mode: str, device: torch.device) -> str:
    """'cpu' or 'gpu' for `data.decode` on this device; one printed line when gpu is refused."""
    if mode not in DECODE_MODES:
        raise ConfigError(f"data.decode must be one of {list(DECODE_MODES)}, got {mode!r}")
    if mode == "cpu":
        return "cpu"
    problem = gpu_decode_problem(device)
    if problem is None:
        return "gpu"
    if mode == "gpu":
        print(f"data.decode=gpu: {problem}; decoding images on the CPU", flush=True)
    return "cpu"


class EncodedFolderDataset(torch.utils.data.Dataset):
    """An image folder whose JPEG items are (file bytes as 1-D uint8, path), decoded later on the
    GPU; other files are decoded here by the folder's own dataset. Items: (payload, label, ok)."""

    def __init__(self, folder: ImageFolderDataset) -> None:
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int):
        path = self.folder.files[index]
        if index in self.folder.unusable or path.suffix.lower() not in (".jpg", ".jpeg"):
            return self.folder[index]
        try:
            raw = Path(path).read_bytes()
        except OSError:
            return self.folder[index]  # counted (or refused) there, as any bad file
        if not raw.startswith(JPEG_MAGIC):  # named .jpg, but not a JPEG: PIL decides
            return self.folder[index]
        payload = (torch.frombuffer(bytearray(raw), dtype=torch.uint8), path)
        return payload, self.folder.labels[index], True


def collate_encoded(items: list) -> tuple[list, torch.Tensor, torch.Tensor]:
    """(payloads of the usable items, their labels, kept per requested item): not stacked,
    since JPEG bytes have any length."""
    kept = torch.tensor([ok for _, _, ok in items], dtype=torch.bool)
    good = [payload for payload, _, ok in items if ok]
    labels = torch.tensor([label for _, label, ok in items if ok], dtype=torch.int64)
    return good, labels, kept


class GpuJpegDecoder:
    """A batch of payloads (JPEG bytes, or images PIL decoded) -> uint8 (B, C, H, W) on `device`."""

    def __init__(self, channels: int, size: tuple[int, int], device: torch.device, on_bad: str):
        if channels not in (1, 3):
            raise ConfigError(f"data.decode=gpu decodes to 1 or 3 channels, not {channels}")
        self.channels, self.size, self.device, self.on_bad = channels, size, device, on_bad
        self.decode_jpeg = _decode_jpeg()

    def __call__(
        self, payloads: list, labels: torch.Tensor, kept: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images, labels, kept), JPEGs nvJPEG cannot decode dropped, counted in `kept`."""
        encoded = [i for i, p in enumerate(payloads) if isinstance(p, tuple)]
        decoded = dict(zip(encoded, self._decode([payloads[i] for i in encoded]), strict=True))
        images, ok = [], []
        for i, payload in enumerate(payloads):
            image = decoded.get(i, payload)
            ok.append(image is not None)
            if image is not None:
                images.append(self._fit(image.to(self.device, non_blocking=True)))
        ok_t = torch.tensor(ok, dtype=torch.bool)
        kept = kept.clone()
        kept[kept.nonzero().flatten()[~ok_t]] = False
        h, w = self.size
        if not images:
            return torch.empty(0, self.channels, h, w, dtype=torch.uint8), labels[ok_t], kept
        return torch.stack(images), labels[ok_t], kept

    def _decode(self, encoded: list[tuple[torch.Tensor, Path]]) -> list[torch.Tensor | None]:
        mode = _read_mode(self.channels)
        try:
            return list(self.decode_jpeg([raw for raw, _ in encoded], mode=mode, device=self.device))
        except RuntimeError:
            pass  # one bad file fails the whole batch: find it, one by one
        out: list[torch.Tensor | None] = []
        for raw, path in encoded:
            try:
                out.append(self.decode_jpeg(raw, mode=mode, device=self.device))
            except RuntimeError as exc:
                if self.on_bad == "fail":
                    raise DataError(
                        f"{path}: cannot decode JPEG on the GPU ({exc}) (data.on_bad_item=fail)"
                    ) from None
                log.warning("skipped corrupt image %s (GPU JPEG decode)", path)
                out.append(None)
        return out

    def _fit(self, image: torch.Tensor) -> torch.Tensor:
        """(C, h, w) uint8 resized to the model's size: bicubic, antialiased as PIL's is."""
        if tuple(image.shape[-2:]) == tuple(self.size):
            return image
        x = F.interpolate(
            image[None].float(), size=self.size, mode="bicubic", antialias=True, align_corners=False
        )
        return x[0].round_().clamp_(0, 255).to(torch.uint8)


def _read_mode(channels: int):
    from torchvision.io import ImageReadMode  # optional dependency: mimkit[gpu-decode]

    return ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB


def decode_on(source, mode: str, channels: int, size: tuple[int, int], device: torch.device) -> str:
    """Switch a folder `TrainSource` to GPU decoding when `data.decode` asks and it can run;
    returns the decode in use ('cpu' or 'gpu'). In-memory sources have nothing to decode."""
    if getattr(source, "dataset", None) is None or resolve_decode(mode, device) != "gpu":
        return "cpu"
    decoder = GpuJpegDecoder(channels, size, device, source.cfg.on_bad_item)
    source.dataset = EncodedFolderDataset(source.dataset)
    source.collate, source.finish = collate_encoded, decoder
    return "gpu"
