"""Numerical parity of mimkit with Hugging Face ViTMAEForPreTraining, both directions.

Random weights at the facebook/vit-mae-base shapes (768 x 12, decoder 512 x 8, 224 px, norm-pix);
HF -> mimkit by the name table, mimkit -> HF through `export --to hf` + `from_pretrained`. The
same images and masking noise go through both; we report the largest absolute difference of the
loss, the reconstructions (logits) and every encoder hidden state, fp32 on CPU.

    python benchmarks/interop_parity.py            # writes benchmarks/results/interop_parity.{json,md,png}
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from mimkit.bench.machine import cpu_name
from mimkit.config import RunConfig
from mimkit.interop.convert import export_checkpoint
from mimkit.interop.hf import hf_config_to_model_config, hf_state_to_mimkit
from mimkit.objectives.mae import build_mae
from mimkit.train.checkpoint import save_checkpoint


def randomise_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * (0.05 if t.dim() > 1 else 0.2))
    return module


def compare(hf_model, ours, batch: int, seed: int) -> dict:
    cfg = ours.cfg
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, cfg.in_chans, *cfg.image_hw, generator=g)
    noise = torch.rand(batch, cfg.num_patches, generator=g)
    with torch.no_grad():
        theirs = hf_model(images, noise=noise, output_hidden_states=True)
        mine = ours(images, noise=noise)
        _, hidden = ours.encoder(images, mine.mask.ids_keep, return_hidden=True)
    return {
        "same_mask": bool(torch.equal(mine.mask.binary, theirs.mask)),
        "loss": float(theirs.loss),
        "loss_abs_diff": float((mine.loss - theirs.loss).abs()),
        "logits_max_abs_diff": float((mine.pred - theirs.logits).abs().max()),
        "hidden_max_abs_diff": [
            float((a - b).abs().max()) for a, b in zip(hidden, theirs.hidden_states, strict=True)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/interop_parity")
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.time()
    hf_model = randomise_(ViTMAEForPreTraining(ViTMAEConfig(norm_pix_loss=True)), 0).eval()
    cfg, _ = hf_config_to_model_config(hf_model.config.to_dict(), "vit-mae-base config")
    ours = build_mae(cfg).eval()
    ours.load_state_dict(hf_state_to_mimkit(hf_model.state_dict(), "hf"))
    hf_to_mimkit = compare(hf_model, ours, args.batch, seed=1)
    del hf_model, ours

    ours = randomise_(build_mae(cfg), 1).eval()
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(Path(tmp) / "ck", ours, RunConfig(model=cfg))
        export_checkpoint(Path(tmp) / "ck", "hf", Path(tmp) / "hf")
        hf_model = ViTMAEForPreTraining.from_pretrained(Path(tmp) / "hf").eval()
    mimkit_to_hf = compare(hf_model, ours, args.batch, seed=2)

    record = {
        "command": " ".join(["python"] + sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{cpu_name()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "config": "facebook/vit-mae-base shapes, random weights, norm_pix_loss, fp32 CPU",
        "batch": args.batch,
        "wall_s": round(time.time() - start, 1),
        "hf_to_mimkit": hf_to_mimkit,
        "mimkit_to_hf": mimkit_to_hf,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    rows = [
        f"| {name} | {r['same_mask']} | {r['loss']:.6f} | {r['loss_abs_diff']:.2e} | "
        f"{r['logits_max_abs_diff']:.2e} | {max(r['hidden_max_abs_diff']):.2e} |"
        for name, r in (("HF -> mimkit", hf_to_mimkit), ("mimkit -> HF", mimkit_to_hf))
    ]
    out.with_suffix(".md").write_text(
        f"# Parity with transformers ViTMAEForPreTraining\n\n`{record['command']}` on "
        f"{record['machine']}, {record['date']}, torch {record['torch']}, transformers "
        f"{record['transformers']}; {record['config']}, batch {args.batch}.\n\n"
        "| direction | same mask | loss | loss abs diff | logits max abs diff | hidden states max abs diff |\n"
        "| --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n"
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    floor = 1e-9  # zero differences drawn at this floor on the log axis
    for name, r in (("HF -> mimkit", hf_to_mimkit), ("mimkit -> HF", mimkit_to_hf)):
        ax.plot([max(d, floor) for d in r["hidden_max_abs_diff"]], marker="o", label=name)
    ax.axhline(1e-5, color="red", linestyle="--", label="tolerance 1e-5")
    ax.set_yscale("log")
    ax.set_xlabel("encoder hidden state (0 = embeddings)")
    ax.set_ylabel(f"max |mimkit - HF| (floor {floor:g})")
    ax.set_title("vit-mae-base shapes: mimkit vs transformers")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
