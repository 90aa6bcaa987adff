"""`mimkit report RUN`: one self-contained static HTML page for a run folder.

The page holds the run config, the training curves (from `metrics.jsonl`), the reconstruction
figures over training (`RUN/reconstructions/`) and at the end (`reconstruction.png`), the
masking strategies at the run's grid and ratio, attention maps of a few test items, every
evaluation table found in the run folder (`*.json`: `results.json`, `eval_*.json`,
`pruning.json`, `embed.json`, ...) and every other PNG there. Pictures are embedded as data
URIs and the style is inline, so the one file can be mailed or opened offline. A short inline
script checks that every picture decoded: it writes `data-images="decoded/total"` on the body
and reports a picture that did not decode on the console (what the browser test reads).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from pathlib import Path
from typing import Any

import torch

from mimkit.data.sources import load_split
from mimkit.errors import MimkitError
from mimkit.inspect.attention import pyplot, save_attention_figures
from mimkit.inspect.masks import mask_gallery
from mimkit.train.checkpoint import CONFIG_FILE, load_model, resolve_checkpoint_dir
from mimkit.yamlio import load_yaml

log = logging.getLogger(__name__)

# json files in a run folder that are state, not results
NOT_TABLES = {"trainer_state.json", "preprocess.json"}
CURVES = (
    ("loss", "loss"),
    ("lr", "learning rate"),
    ("img_per_s", "images / s"),
    ("grad_norm", "gradient norm"),
)
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 1.5em; max-width: 1100px;
  color: #222; }
.row { display: flex; flex-wrap: wrap; gap: 1em; } .row figure { flex: 0 1 240px; margin: 0; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.85em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }
th { background: #f0f0f0; } figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; image-rendering: pixelated; border: 1px solid #eee; }
.note { color: #777; }
"""
CHECK_SCRIPT = """
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const decoded = images.filter((im) => im.complete && im.naturalWidth > 0);
  document.body.dataset.images = decoded.length + "/" + images.length;
  images.filter((im) => !decoded.includes(im))
    .forEach((im) => console.error("picture did not decode: " + im.alt));
});
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure(png: bytes, caption: str) -> str:
    alt = html.escape(caption, quote=True)
    return (
        f'<figure><img src="{data_uri(png)}" alt="{alt}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The lines of `metrics.jsonl` that parse (a run killed mid-write leaves a torn last line)."""
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s: skipped a line that is not JSON", path)
    return records


def curves_png(records: list[dict[str, Any]]) -> bytes | None:
    """Loss, lr, img/s and grad norm against step, from the `train` lines; None if none."""
    train = [r for r in records if r.get("event") == "train"]
    if not train:
        return None
    plt = pyplot()
    present = [(k, t) for k, t in CURVES if any(k in r for r in train)]
    fig, axes = plt.subplots(1, len(present), figsize=(3.4 * len(present), 2.8), squeeze=False)
    for ax, (key, title) in zip(axes[0], present, strict=True):
        points = [(r["step"], r[key]) for r in train if r.get(key) is not None]
        ax.plot(*zip(*points, strict=True), marker="." if len(points) < 40 else None)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and len(value) > 12:
        value = [*value[:12], f"... ({len(value)} in all)"]
    if isinstance(value, (list, dict)):
        return html.escape(json.dumps(value, default=str)[:300])
    return html.escape(str(value))


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def table_html(data: Any) -> str:
    """A JSON result as tables: lists of records as rows, everything else as key | value."""
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        rows = [_flatten(r) for r in data]
        keys = list(dict.fromkeys(k for r in rows for k in r))
        head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
        body = "".join(
            "<tr>" + "".join(f"<td>{_cell(r.get(k, ''))}</td>" for k in keys) + "</tr>"
            for r in rows
        )
        return f"<table><tr>{head}</tr>{body}</table>"
    if not isinstance(data, dict):
        return f"<pre>{html.escape(json.dumps(data, indent=1, default=str))}</pre>"
    scalars, tables = {}, []
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            tables.append(f"<p><b>{html.escape(key)}</b></p>{table_html(value)}")
        else:
            scalars.update(_flatten({key: value}))
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{_cell(v)}</td></tr>" for k, v in scalars.items()
    )
    return (f"<table>{rows}</table>" if rows else "") + "".join(tables)


def find_tables(run: Path) -> list[Path]:
    """Every result JSON in the run folder and below, but not feature caches or state."""
    found = []
    for path in sorted(run.rglob("*.json")):
        parts = path.relative_to(run).parts
        if path.name in NOT_TABLES or "features" in parts or "wandb" in parts or "mlruns" in parts:
            continue
        found.append(path)
    return found


def _png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _model_pictures(run: Path, checkpoint: Path, items: int) -> tuple[list[str], list[Path]]:
    """Mask gallery and attention figures drawn from the checkpoint; (html parts, files used)."""
    parts, used = [], []
    model, cfg = load_model(checkpoint)
    grid = cfg.model.grid_shape
    if len(grid) == 2 and grid[0] == grid[1]:
        try:
            images, _ = load_split(cfg.data, "test", cfg.model.in_chans, cfg.model.image_hw)
            image = images[0].float() / 255
        except MimkitError as exc:
            log.warning("report: no test images for the mask gallery (%s)", exc)
            image = torch.full((1, *cfg.model.image_hw), 0.8)
        tile = max(4, 160 // grid[0])
        rgb = image[:3] if image.shape[0] == 3 else image[:1].expand(3, -1, -1)
        size = (grid[0] * tile, grid[1] * tile)
        image = torch.nn.functional.interpolate(rgb[None], size=size, mode="nearest")[0]
        gallery = mask_gallery(image, grid[0], cfg.masking.ratio, seed=cfg.train.seed)
        caption = (
            f"every masking strategy at this run's grid ({grid[0]}x{grid[1]}) and ratio "
            f"({cfg.masking.ratio}); this run used '{cfg.masking.strategy}'"
        )
        parts.append("<h2>Masks</h2>" + _figure(_png_bytes(gallery), caption))
    try:
        images, _ = load_split(cfg.data, "test", cfg.model.in_chans, cfg.model.image_hw)
    except MimkitError as exc:
        parts.append(f'<h2>Attention</h2><p class="note">no test data to draw on: {exc}</p>')
        return parts, used
    paths, maps = save_attention_figures(
        model.encoder, images[:items], cfg.data.mean, cfg.data.std, run / "inspect"
    )
    used += paths
    parts.append("<h2>Attention</h2>")
    for path in paths:
        caption = (
            f"last-block ({maps.depth}) attention of the {maps.query} per head, and rollout "
            f"over all blocks, on {items} test items ({path.name})"
        )
        parts.append(_figure(path.read_bytes(), caption))
    return parts, used


def build_report(run: str | Path, out: str | Path | None = None, attention_items: int = 4) -> Path:
    """Write the page (default `RUN/report.html`) and return its path."""
    checkpoint = resolve_checkpoint_dir(run)
    run = checkpoint.parent
    out = Path(out) if out else run / "report.html"
    config_text = (checkpoint / CONFIG_FILE).read_text()
    records = read_metrics(run / "metrics.jsonl")
    body = [_summary_section(run, config_text, records), _curves_section(records)]
    used: set[Path] = set()
    body += _reconstruction_section(run, used)
    if attention_items > 0:
        parts, drawn = _model_pictures(run, checkpoint, attention_items)
        body += parts
        used.update(drawn)
    body += _results_section(run)
    body += _other_pictures_section(run, used, out)
    body.append(f"<h2>Config</h2><pre>{html.escape(config_text)}</pre>")
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>mimkit run {html.escape(run.name)}</title><style>{STYLE}</style>"
        f"<script>{CHECK_SCRIPT}</script></head><body>{''.join(body)}</body></html>"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return out


def _summary_section(run: Path, config_text: str, records: list[dict]) -> str:
    end = next((r for r in reversed(records) if r.get("event") == "end"), None)
    start = next((r for r in records if r.get("event") == "start"), None)
    cfg = load_yaml(config_text) or {}
    method = (cfg.get("method") or {}).get("name", "mae")
    model = cfg.get("model") or {}
    summary = f"method {method}, model {model.get('preset', '')} " + ", ".join(
        f"{k} {model[k]}" for k in ("embed_dim", "depth", "patch_size", "img_size") if k in model
    )
    if end:
        summary += f"; {end.get('step')} steps, final loss {end.get('loss', float('nan')):.4f}"
    if start:
        summary += f"; trained on {start.get('device')} ({start.get('items')} items)"
    return f"<h1>mimkit run: {html.escape(run.name)}</h1><p>{html.escape(summary)}</p>"


def _curves_section(records: list[dict]) -> str:
    curves = curves_png(records)
    if not curves:
        return '<h2>Training curves</h2><p class="note">no training lines in metrics.jsonl</p>'
    return "<h2>Training curves</h2>" + _figure(
        curves, "from metrics.jsonl, one point per logged window"
    )


def _reconstruction_section(run: Path, used: set[Path]) -> list[str]:
    """Pictures drawn after each saved epoch and at the end; adds what it shows to `used`."""
    steps = sorted((run / "reconstructions").glob("step_*.png"))
    final = run / "reconstruction.png"
    if not steps and not final.is_file():
        return []
    row = []
    for path in steps:
        step = int(path.stem.split("_")[1])
        row.append(_figure(path.read_bytes(), f"after step {step} (training images)"))
        used.add(path)
    if final.is_file():
        row.append(_figure(final.read_bytes(), "at the end (test images)"))
        used.add(final)
    return [
        "<h2>Reconstructions</h2><p>columns: original | masked | reconstruction | "
        "visible + reconstruction</p>",
        f'<div class="row">{"".join(row)}</div>',
    ]


def _results_section(run: Path) -> list[str]:
    tables = find_tables(run)
    body = ["<h2>Results</h2>"]
    if not tables:
        body.append('<p class="note">no result files (*.json) in the run folder yet</p>')
    for path in tables:
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            body.append(f'<p class="note">{html.escape(str(path))}: not JSON, left out</p>')
            continue
        rel = path.relative_to(run)
        body.append(f"<h3>{html.escape(str(rel))}</h3>{table_html(data)}")
    return body


def _other_pictures_section(run: Path, used: set[Path], out: Path) -> list[str]:
    others = [p for p in sorted(run.rglob("*.png")) if p not in used and out.parent != p]
    others = [p for p in others if not {"wandb", "mlruns", "tensorboard"} & set(p.parts)]
    if not others:
        return []
    return ["<h2>Other pictures in the run folder</h2>"] + [
        _figure(p.read_bytes(), str(p.relative_to(run))) for p in others
    ]
