"""`mimkit inspect` (pictures of what models and methods do) and `mimkit report` (a run as
one HTML page)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="pictures of what models and methods do")
    isub = p.add_subparsers(dest="what", required=True)
    masks = isub.add_parser("masks", help="a PNG gallery of every masking strategy on one image")
    masks.add_argument("--image", help="an image file (default: a Fashion-MNIST test image)")
    masks.add_argument("--grid", type=int, default=14, help="patches per side")
    masks.add_argument("--ratio", type=float, default=0.75, help="fraction of patches masked")
    masks.add_argument("--seed", type=int, default=0, help="seed of the mask draws")
    masks.add_argument("--out", default="mask_gallery.png", help="PNG file to write")
    masks.set_defaults(func=cmd_inspect_masks)

    attn = isub.add_parser(
        "attention",
        help="last-block attention per head and attention rollout, overlaid on images",
    )
    attn.add_argument("checkpoint", help="mimkit checkpoint folder (or the run folder holding it)")
    attn.add_argument(
        "images",
        nargs="*",
        help="image files (2-D models); default: the first --count test items of the run's data",
    )
    attn.add_argument("--count", type=int, default=4, help="test items when no files are given")
    attn.add_argument(
        "--residual", type=float, default=0.5, help="rollout: weight of the identity per block"
    )
    attn.add_argument("--out", help="output folder (default: RUN/inspect)")
    attn.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    attn.set_defaults(func=cmd_inspect_attention)

    embed = isub.add_parser(
        "embed",
        help="2-D projections of frozen features by label, and per-block statistics as plots",
    )
    embed.add_argument("checkpoint", help="mimkit checkpoint folder (or the run folder holding it)")
    embed.add_argument("--count", type=int, default=1000, help="labelled test items projected")
    embed.add_argument(
        "--projections",
        nargs="+",
        choices=("pca", "tsne", "umap"),
        help="default: pca tsne, and umap when umap-learn is installed",
    )
    embed.add_argument("--seed", type=int, default=0, help="seed of t-SNE and UMAP")
    embed.add_argument("--out", help="output folder (default: RUN/inspect)")
    embed.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    embed.set_defaults(func=cmd_inspect_embed)

    report = sub.add_parser(
        "report", help="one self-contained HTML page for a run: config, curves, pictures, results"
    )
    report.add_argument("run", help="run folder (or its checkpoint folder)")
    report.add_argument("--out", help="HTML file to write (default: RUN/report.html)")
    report.add_argument(
        "--attention-items",
        type=int,
        default=4,
        help="test items drawn with attention maps (0: no model pictures, no data read)",
    )
    report.set_defaults(func=cmd_report)


def cmd_inspect_masks(args: argparse.Namespace) -> int:
    # torch loads only when a command runs: --help stays fast
    from mimkit.inspect.masks import save_mask_gallery

    path = save_mask_gallery(args.out, args.image, args.grid, args.ratio, args.seed)
    print(f"mask gallery: {path}")
    return 0


def _load(checkpoint: str, device_name: str):
    """(encoder, run config, output folder default) of a checkpoint."""
    # torch loads only when a command runs: --help stays fast
    from mimkit.train.checkpoint import load_model, resolve_checkpoint_dir
    from mimkit.train.runtime import pick_device

    model, cfg = load_model(checkpoint, pick_device(device_name))
    return model.encoder, cfg, resolve_checkpoint_dir(checkpoint).parent / "inspect"


def _test_items(cfg, count: int):
    # torch loads only when a command runs: --help stays fast
    from mimkit.data.sources import load_split
    from mimkit.errors import ConfigError

    if count < 1:
        raise ConfigError(f"--count: expected at least 1 item, got {count}")
    images, labels = load_split(cfg.data, "test", cfg.model.in_chans, cfg.model.image_hw)
    return images[:count], labels[:count]


def cmd_inspect_attention(args: argparse.Namespace) -> int:
    # torch loads only when a command runs: --help stays fast
    from mimkit.errors import ConfigError
    from mimkit.inspect.attention import load_image_files, save_attention_figures

    encoder, cfg, default_out = _load(args.checkpoint, args.device)
    if args.images:
        if len(cfg.model.input_size) != 2:
            raise ConfigError(
                "image files are for 2-D models; this one takes clips or volumes: leave out the "
                "files to use the run's own test data"
            )
        images = load_image_files(args.images, cfg.model.in_chans, cfg.model.image_hw)
    else:
        images, _ = _test_items(cfg, args.count)
    paths, maps = save_attention_figures(
        encoder, images, cfg.data.mean, cfg.data.std, args.out or default_out, args.residual
    )
    print(f"query: {maps.query}; rollout over {maps.depth} blocks (residual {args.residual})")
    for path in paths:
        print(f"attention: {path}")
    return 0


def cmd_inspect_embed(args: argparse.Namespace) -> int:
    # torch loads only when a command runs: --help stays fast
    from mimkit.inspect.embed import FASHION_MNIST_CLASSES, save_embedding_figures

    encoder, cfg, default_out = _load(args.checkpoint, args.device)
    images, labels = _test_items(cfg, args.count)
    names = list(FASHION_MNIST_CLASSES) if cfg.data.source == "fashion_mnist" else None
    result = save_embedding_figures(
        encoder,
        images,
        labels,
        cfg.data.mean,
        cfg.data.std,
        args.out or default_out,
        args.projections,
        names,
        args.seed,
        device=next(encoder.parameters()).device,
    )
    stats = result["summary"]["blocks"]
    print(f"embedding ({', '.join(result['summary']['projections'])}): {result['embedding']}")
    print(f"per-block statistics: {result['blocks']}")
    for i, (norm, ent, w) in enumerate(
        zip(stats["feature_norm"], stats["attention_entropy"], stats["weight_entropy"], strict=True)
    ):
        print(
            f"  block {i + 1}: feature norm {norm:.2f}  attention entropy {ent:.3f}  weight entropy {w:.3f}"
        )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    # torch loads only when a command runs: --help stays fast
    from mimkit.inspect.report_html import build_report

    path = build_report(args.run, args.out, args.attention_items)
    print(f"report: {path}  (self-contained: open it in any browser, offline)")
    return 0
