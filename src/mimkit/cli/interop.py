"""`mimkit export` and `mimkit import`: mimkit checkpoints to and from HF, timm and official MAE."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="write a checkpoint for Hugging Face, timm, or as weights-only safetensors"
    )
    p.add_argument("checkpoint", help="mimkit checkpoint folder (or the run folder holding it)")
    p.add_argument(
        "--to",
        required=True,
        choices=("hf", "timm", "safetensors", "onnx"),
        help="target format (onnx: the encoder's features, dynamic batch)",
    )
    p.add_argument("out", help="output folder")
    p.add_argument(
        "--hf-arch",
        default="pretraining",
        choices=("pretraining", "vit"),
        help="hf: ViTMAEForPreTraining with decoder or ViTModel (encoder only)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "import", help="convert HF, timm or official MAE weights into a mimkit checkpoint"
    )
    p.add_argument("src", help="HF save_pretrained folder, timm folder/file, MAE .pth, or mimkit")
    p.add_argument("out", help="output checkpoint folder")
    p.add_argument(
        "--from",
        dest="fmt",
        choices=("hf", "timm", "mae", "mimkit"),
        help="source format (default: detected)",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        help="model.*/data.* overrides, e.g. model.img_size=448 (interpolates position tables)",
    )
    p.set_defaults(func=cmd_import)


def cmd_export(args: argparse.Namespace) -> int:
    if args.to == "onnx":
        return cmd_export_onnx(args)
    # torch loads only when a command runs: --help stays fast
    from mimkit.interop.convert import export_checkpoint
    from mimkit.train.checkpoint import load_config_file, resolve_checkpoint_dir

    out = export_checkpoint(args.checkpoint, args.to, args.out, args.hf_arch)
    pool = load_config_file(resolve_checkpoint_dir(args.checkpoint)).model.pool
    timm_pool = "global_pool='avg', fc_norm=False" if pool == "avg" else "global_pool='token'"
    what = {
        "hf": f"Hugging Face folder ({args.hf_arch}): from_pretrained('{out}')",
        "timm": f"timm folder: encoder only, {timm_pool}, num_classes=0",
        "safetensors": "mimkit checkpoint, weights only (encoder + decoder)",
    }[args.to]
    print(f"exported {args.checkpoint} -> {out}  ({what})")
    if args.to == "hf":
        # transformers pools no features itself: say which pooling mimkit's features use
        how = "the mean of the patch tokens" if pool == "avg" else "the class token"
        print(
            f"features: mimkit pools {how} of last_hidden_state (model.pool={pool}); recorded as "
            f"config.json 'mimkit_features' and restored by `mimkit import`"
        )
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    # torch loads only when a command runs: --help stays fast
    from mimkit.interop.onnx import export_onnx

    path = export_onnx(args.checkpoint, args.out)
    print(
        f"exported {args.checkpoint} -> {path}  (encoder features: input 'pixels' (batch, C, ...) "
        f"normalised as in {path.parent / 'preprocess.json'}, output 'features'; any batch size)"
    )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    # torch loads only when a command runs: --help stays fast
    from mimkit.interop.convert import import_checkpoint

    result = import_checkpoint(args.src, args.out, args.fmt, args.overrides)
    decoder = (
        "decoder imported" if result.has_decoder else "encoder only, decoder freshly initialised"
    )
    m = result.run.model
    print(
        f"imported {args.src} ({result.fmt}) -> {result.out}  ({decoder}; ViT {m.embed_dim}x"
        f"{m.depth}, {m.num_heads} heads, patch {m.patch_size}, image {m.image_hw})"
    )
    for note in result.notes:
        print(f"assumed: {note}")
    return 0
