"""`mimkit bench --loader`: what one CPU core feeds, per input path, at the model's size.

Three paths, each read through the loop's own `TrainSource` (the same order, DataLoader workers
and collation as training) and ending where the model starts, on the device (`prepare_batch`:
normalise, random-resized-crop, flip):

* **JPEG folder**: JPEGs (`jpeg_side` px, made here, seeded) decoded and resized by PIL in
  DataLoader workers;
* **packed shards**: the same images after `mimkit data pack` (pre-resized uint8 `.npy` in
  WebDataset tars), read by offset in workers;
* **in memory**: a uint8 tensor indexed per batch.

The measure is CPU time, not wall time: `img per CPU-second` is the images a path delivers per
second of CPU spent by the main process and its workers (`getrusage` of self + children, the
workers joined at each epoch's end), less the augmentation's own CPU time (which a GPU does).
It is what one core feeds, whatever else runs on a shared machine, and gives the cores needed to
feed a target rate: `target / img_per_cpu_s`. The paths run interleaved, one epoch each per
round, so load from other work falls on each alike; wall-clock img/s is recorded beside.
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from mimkit.config import RunConfig
from mimkit.data.config import DataConfig
from mimkit.data.pack import pack_dataset
from mimkit.data.sources import TrainSource
from mimkit.errors import ConfigError
from mimkit.train.loop import prepare_batch

from .machine import cpu_name
from .pipeline import synthetic_images, write_image_folder
from .step import synchronize

# MAE ViT-B/16 at 224 px, mask 0.75: 6.7k img/s is 40% MFU on one H100/H200 (989 bf16 TFLOP/s)
FEED_TARGET = 6700
PATHS = ("jpeg_folder", "packed_shards", "in_memory")


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished (joined) children."""
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def make_jpeg_folder(root: Path, items: int, side: int, seed: int, chunk: int = 256) -> Path:
    """`items` seeded RGB JPEGs of `side` px under `root/0/` (written in chunks: bounded memory)."""
    folder = Path(root) / "0"
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == items:
        return Path(root)
    for start in range(0, items, chunk):
        images = synthetic_images(min(chunk, items - start), 3, (side, side), seed=seed + start)
        part = write_image_folder(root / f".part{start}", images)
        for i, path in enumerate(sorted((part / "0").glob("*.jpg"))):
            folder.mkdir(parents=True, exist_ok=True)
            path.rename(folder / f"{start + i:07d}.jpg")
        (part / "0").rmdir()
        part.rmdir()
    return Path(root)


def time_epoch(
    source: TrainSource, cfg: RunConfig, batch: int, device: torch.device, epoch: int
) -> dict:
    """One epoch through `source` to augmented batches on `device`: images, wall seconds, CPU
    seconds of loading (all processes) and of the augmentation."""
    generator = torch.Generator(device).manual_seed(epoch)
    augment_cpu, images = 0.0, 0
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    for b in source.batches(epoch, batch):
        before = time.process_time()
        prepare_batch(b.images, cfg, device, generator)
        synchronize(device)
        augment_cpu += time.process_time() - before
        images += b.images.shape[0]
    wall = time.perf_counter() - wall0
    total_cpu = cpu_seconds() - cpu0  # the workers were joined when the epoch's loader ended
    return {
        "images": images,
        "wall_s": wall,
        "load_cpu_s": total_cpu - augment_cpu,
        "augment_cpu_s": augment_cpu,
    }


def _summarise(runs: list[dict], workers: int, target: float) -> dict:
    rate = [r["images"] / r["load_cpu_s"] for r in runs]
    wall = [r["images"] / r["wall_s"] for r in runs]
    per_core = statistics.median(rate)
    return {
        "workers": workers,
        "rounds": len(runs),
        "images_per_round": runs[0]["images"],
        "img_per_cpu_s": round(per_core, 1),
        "img_per_cpu_s_each_round": [round(x, 1) for x in rate],
        "wall_img_per_s": round(statistics.median(wall), 1),
        "augment_cpu_ms_per_img": round(
            1e3 * statistics.median(r["augment_cpu_s"] / r["images"] for r in runs), 3
        ),
        "cores_to_feed_target": round(target / per_core, 2),
    }


def bench_loader(
    cfg: RunConfig,
    work_dir: Path,
    device: torch.device,
    items: int = 2000,
    jpeg_side: int = 256,
    batch: int = 64,
    workers: int = 1,
    rounds: int = 3,
    seed: int = 0,
    target: float = FEED_TARGET,
) -> dict:
    """Interleaved rounds over the three paths at `cfg.model.image_hw`; see the module doc."""
    if workers < 0 or rounds < 1 or items < batch:
        raise ConfigError("--workers must be >= 0, --rounds >= 1 and --pipeline-items >= --batch")
    hw, channels = cfg.model.image_hw, cfg.model.in_chans
    if channels != 3:
        raise ConfigError(f"the loader benchmark reads RGB JPEGs; model.in_chans is {channels}")
    work_dir = Path(work_dir)
    start = time.perf_counter()
    folder = make_jpeg_folder(
        work_dir / f"jpeg_{jpeg_side}px_{items}_seed{seed}", items, jpeg_side, seed
    )
    pack_dir = work_dir / f"pack_{hw[0]}x{hw[1]}_of_{folder.name}"
    if not (pack_dir / "pack.json").is_file():
        pack_dataset(folder, pack_dir, hw, channels, workers=workers)
    prepared_s = time.perf_counter() - start
    common = dict(mean=cfg.data.mean, std=cfg.data.std, num_workers=workers)
    jpeg = TrainSource(DataConfig(source="folder", path=str(folder), **common), channels, hw, seed)
    packed = TrainSource(
        DataConfig(source="packed", path=str(pack_dir), **common), channels, hw, seed
    )
    memory = TrainSource.from_tensors(
        torch.stack([packed.dataset[i][0] for i in range(items)]), seed=seed
    )
    sources = dict(zip(PATHS, (jpeg, packed, memory), strict=True))
    runs: dict[str, list[dict]] = {name: [] for name in PATHS}
    load_before = os.getloadavg()
    # one thread per process, as in DataLoader workers: a per-core measure, and no intra-op
    # thread spinning (on a busy 2-core machine a 2-thread torch.stack of one batch took 1 s)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for r in range(rounds):
            for name, source in sources.items():  # interleaved: each path once per round
                runs[name].append(time_epoch(source, cfg, batch, device, r))
    finally:
        torch.set_num_threads(threads)
    paths = {
        name: _summarise(runs[name], workers if name != "in_memory" else 0, target)
        for name in PATHS
    }
    ratio = paths["packed_shards"]["img_per_cpu_s"] / paths["jpeg_folder"]["img_per_cpu_s"]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "load_avg_before": [round(x, 2) for x in load_before],
            "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "image_hw": list(hw),
        "jpeg_side": jpeg_side,
        "items": items,
        "batch": batch,
        "seed": seed,
        "feed_target_img_per_s": target,
        "prepare_s": round(prepared_s, 3),  # making the JPEGs and the pack (0 when kept)
        "wall_s": round(time.perf_counter() - start, 3),
        "main_process_threads": 1,
        "paths": paths,
        "packed_over_jpeg_per_core": round(ratio, 2),
    }


def loader_markdown(record: dict) -> str:
    """The result as a markdown table with its command, machine and date."""
    m = record["machine"]
    hw = "x".join(str(x) for x in record["image_hw"])
    lines = [
        f"# Input pipeline per CPU core at {hw} px ({record['date']})",
        "",
        f"Command: `{record.get('command', 'mimkit bench --loader')}`",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, device {record['device']}; "
        f"load average {m['load_avg_before']} before, {m['load_avg_after']} after.",
        f"Data: {record['items']} seeded synthetic RGB JPEGs of {record['jpeg_side']} px "
        f"(quality 90), resized to {hw}; batch {record['batch']}; seed {record['seed']}.",
        f"Wall time: {record['wall_s']} s, {record['prepare_s']} s of it making the JPEGs and the pack."
        if "wall_s" in record
        else "Wall time: not recorded by this version.",
        "",
        "| path | workers | img per CPU-second (median) | each round | wall img/s | "
        f"augment CPU ms/img | cores to feed {record['feed_target_img_per_s']:.0f} img/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, p in record["paths"].items():
        lines.append(
            f"| {name.replace('_', ' ')} | {p['workers']} | {p['img_per_cpu_s']} | "
            f"{p['img_per_cpu_s_each_round']} | {p['wall_img_per_s']} | "
            f"{p['augment_cpu_ms_per_img']} | {p['cores_to_feed_target']} |"
        )
    lines += [
        "",
        f"Packed shards over the JPEG folder, per core: **{record['packed_over_jpeg_per_core']}x**.",
        "",
    ]
    return "\n".join(lines)
