"""Video files decoded with PyAV (bundled ffmpeg) into uint8 clips (C, T, H, W).

Layout as image folders: `root/CLASS/*.mp4` (labels by sorted class name), loose files are
unlabelled. Every `stride`-th frame is kept, at most `max_frames` of them; the random temporal
crop to the model's frame count happens later, on the device (`data.transforms.augment_clips`).
A file that cannot be decoded, or is shorter than asked, is skipped and counted.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mimkit.data.folder import list_images
from mimkit.errors import DataError
from mimkit.progress import progress_interval

log = logging.getLogger(__name__)
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v"})


def _require_av():
    try:
        import av  # optional dependency: mimkit[video]
    except ImportError as exc:
        raise DataError(
            "video sources need PyAV: pip install 'mimkit[video]' (or pip install av)"
        ) from exc
    return av


def decode_video(
    path: str | Path, channels: int = 3, stride: int = 1, max_frames: int | None = None
) -> np.ndarray:
    """uint8 (C, T, H, W) frames of one file; raises `DataError` when it cannot be decoded."""
    av = _require_av()
    fmt = {1: "gray", 3: "rgb24"}.get(channels)
    if fmt is None:
        raise DataError(f"{path}: videos decode to 1 (grey) or 3 (RGB) channels, not {channels}")
    frames = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            for i, frame in enumerate(container.decode(stream)):
                if i % stride:
                    continue
                frames.append(frame.to_ndarray(format=fmt))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except (av.error.FFmpegError, IndexError, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot decode video ({exc})") from exc
    if not frames:
        raise DataError(f"{path}: no frames decoded")
    clip = np.stack(frames)  # (T, H, W) or (T, H, W, 3)
    clip = clip[:, None] if clip.ndim == 3 else clip.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(clip.transpose(1, 0, 2, 3))


def load_video_folder(
    folder: Path,
    channels: int,
    size: tuple[int, int],
    stride: int = 1,
    max_frames: int | None = None,
    min_frames: int = 1,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(uint8 clips (N, C, T, H, W), labels, skipped) for every video under `folder`.

    Clips are cut to the shortest decoded length so they stack; files shorter than
    `min_frames` (after the stride), of another frame size, or undecodable are skipped.
    """
    files, labels, _ = list_images(folder, VIDEO_EXTENSIONS)
    clips, kept, skipped = [], [], 0
    bar = tqdm(
        files,
        desc="decode videos",
        unit="file",
        disable=not progress,
        mininterval=progress_interval(),
    )
    for path, label in zip(bar, labels, strict=True):
        try:
            clip = decode_video(path, channels, stride, max_frames)
        except DataError as exc:
            skipped += 1
            log.warning("skipped %s", exc)
            continue
        if clip.shape[1] < min_frames or tuple(clip.shape[2:]) != tuple(size):
            skipped += 1
            log.warning(
                "skipped %s: %d frames of %dx%d; expected >= %d frames of %dx%d",
                path,
                clip.shape[1],
                clip.shape[2],
                clip.shape[3],
                min_frames,
                *size,
            )
            continue
        clips.append(clip)
        kept.append(label)
    if skipped:
        log.warning(
            "%s: skipped %d unreadable or unfitting video(s) of %d", folder, skipped, len(files)
        )
    if not clips:
        raise DataError(f"{folder}: none of {len(files)} videos could be used")
    length = min(c.shape[1] for c in clips)
    stacked = torch.from_numpy(np.stack([c[:, :length] for c in clips]))
    return stacked, torch.tensor(kept, dtype=torch.int64), skipped


def write_video(path: str | Path, frames: np.ndarray, fps: int = 8) -> Path:
    """Write uint8 frames (T, H, W) grey or (T, H, W, 3) RGB as H.264 in an .mp4 (even sizes)."""
    av = _require_av()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t, h, w = frames.shape[:3]
    fmt = "gray" if frames.ndim == 3 else "rgb24"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "12", "preset": "veryfast"}
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format=fmt)
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
