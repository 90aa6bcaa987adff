"""A fine-tuning head that starts as a linear probe (LP-FT, Kumar et al. 2022).

Why: a fine-tune of a few hundred steps that starts from MAE's near-zero head spends its first
steps sending the gradients of a random head through the pretrained blocks, and on
Fashion-MNIST (10k labels, 3 epochs) it ended *below* a linear probe on the same frozen features
(77.0 % vs 79.5 %, docs/results/finetune-recipe.md). Fitting the head on the frozen, pooled
features first, then fine-tuning everything, starts the run where the probe ends.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.eval.linear import few_cpu_threads

#: Full-batch L-BFGS iterations and L2 strength of the head fit (on <= 10k items: seconds).
PROBE_ITERATIONS = 100
PROBE_L2 = 1e-4


@torch.no_grad()
def pooled_features(
    classifier: nn.Module,
    images: torch.Tensor,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    batch_size: int = 512,
) -> torch.Tensor:
    """The classifier's pooled features (what its head reads) of uint8 `images`, in eval mode;
    `prepare` turns a batch on `device` into the classifier's input (normalise, resize)."""
    was_training = classifier.training
    classifier.eval()
    try:
        chunks = [
            classifier.pooled(prepare(images[i : i + batch_size].to(device))).float()
            for i in range(0, len(images), batch_size)
        ]
    finally:
        classifier.train(was_training)
    return torch.cat(chunks)


def fit_linear_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    iterations: int = PROBE_ITERATIONS,
    l2: float = PROBE_L2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of softmax regression on `features` by full-batch L-BFGS from zero: no
    learning rate to choose. On one CPU thread: L-BFGS's line search amplifies the last-bit
    differences that other thread counts give to the gradient's reductions (measured: 5e-3 in
    the weights between 1 and 2 threads), and one process and a `torchrun` of two must start
    their fine-tunes from the same head."""
    with few_cpu_threads(torch.device("cpu")):
        return _lbfgs_fit(features, labels, num_classes, iterations, l2)


def _lbfgs_fit(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, iterations: int, l2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    weight = torch.zeros(num_classes, features.shape[1], requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    x, y = features.detach().cpu(), labels.cpu().long()
    opt = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + l2 * weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach(), bias.detach()


def probe_initialised_head(
    classifier: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
) -> float:
    """Set `classifier.head` to a linear probe fitted on its own frozen pooled features of the
    (un-augmented) training `images`; returns the probe's accuracy on those items. A
    distillation head (G2SD's specific stage) starts as the same probe: left near zero, it
    would halve the probe's logits in the two heads' test-time average and pull the encoder
    with half the loss from a blank start (measured: specific distillation then cost 1.4-1.6
    points, docs/results/compression.md)."""
    features = pooled_features(classifier, images, prepare, device)
    weight, bias = fit_linear_head(features, labels, classifier.head.out_features)
    heads = [classifier.head]
    if getattr(classifier, "dist_head", None) is not None:
        heads.append(classifier.dist_head)
    with torch.no_grad():
        for head in heads:
            head.weight.copy_(weight.to(head.weight.device))
            head.bias.copy_(bias.to(head.bias.device))
        predictions = (features.cpu() @ weight.T + bias).argmax(dim=1)
    return (predictions == labels.cpu()).float().mean().item()
