"""Raw-input baselines for docs/results/segmentation.md: a linear head on the raw 7x7 patch
pixels (the encoder's input grid, 63 px; 49 values per patch) and the constant "background
everywhere" predictor, with the segment protocol's head training.

PYTHONPATH=src python3 docs/results/segmentation_pixels.py SCENES TRAIN_LIMIT VAL_LIMIT EPOCHS
"""

import json
import sys
import time

import torch

from mimkit.data.segmentation import load_segmentation_split
from mimkit.eval import segment as S
from mimkit.eval.segment_settings import SegmentSettings
from mimkit.patches import patchify

scenes, n_train, n_val, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
train = load_segmentation_split(scenes, "train", 1, n_train)
val = load_segmentation_split(scenes, "val", 1, n_val)
size = tuple(val.labels.shape[-2:])
classes = val.num_classes


def maps(split):
    x = S.resize_to((split.images.float() / 255 - 0.286) / 0.353, (63, 63))
    return [patchify(x, 7).transpose(1, 2).reshape(len(x), 49, 9, 9)]


out = {}
for seed in (0, 1):
    start = time.perf_counter()
    torch.manual_seed(seed)
    head = S.LinearSegHead(49, classes)
    settings = SegmentSettings(epochs=epochs, lr=1e-2, seed=seed)
    S.train_on_maps(head, maps(train), train.labels, 255, settings, torch.device("cpu"))
    pred = S.predict_maps(head, maps(val), size, torch.device("cpu"))
    sc = S.scores_from_confusion(S.confusion_matrix(pred, val.labels, classes, 255))
    out[f"pixels_linear_seed{seed}"] = {
        "miou": sc.miou,
        "pixel_acc": sc.pixel_acc,
        "seconds": time.perf_counter() - start,
    }
const = torch.zeros_like(val.labels)
sc = S.scores_from_confusion(S.confusion_matrix(const, val.labels, classes, 255))
out["constant_background"] = {"miou": sc.miou, "pixel_acc": sc.pixel_acc}
print(json.dumps(out, indent=1))
