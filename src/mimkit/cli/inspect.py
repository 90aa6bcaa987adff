"""`mimkit inspect`: pictures of what models and methods do."""

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


def cmd_inspect_masks(args: argparse.Namespace) -> int:
    # torch loads only when a command runs: --help stays fast
    from mimkit.inspect.masks import save_mask_gallery

    path = save_mask_gallery(args.out, args.image, args.grid, args.ratio, args.seed)
    print(f"mask gallery: {path}")
    return 0
