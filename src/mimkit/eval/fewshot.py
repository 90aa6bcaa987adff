"""Few-shot linear probe: n labelled examples per class, averaged over seeds, with the spread.

With 1 to 10 examples per class there is nothing to carve a validation split from, so the
recipe is fixed in advance (no selection at all, hence nothing for test labels to leak into):
the probe's BatchNorm is frozen to the statistics of the whole *unlabelled* training bank, and
the linear layer is an L2-regularised multinomial logistic regression solved to convergence with
L-BFGS (a convex problem: the answer does not depend on a learning rate or an epoch budget).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mimkit.errors import DataError
from mimkit.eval.linear import LinearProbe, num_classes_of, probe_accuracy
from mimkit.progress import progress_interval

DEFAULT_SHOTS = (1, 5, 10)
DEFAULT_SEEDS = (0, 1, 2, 3, 4)


def sample_per_class(labels: torch.Tensor, shots: int, seed: int) -> torch.Tensor:
    """Indices of `shots` random items of every class present in `labels` (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for cls in torch.unique(labels).tolist():
        idx = (labels == cls).nonzero().flatten()
        if len(idx) < shots:
            raise DataError(f"class {cls} has {len(idx)} training items; {shots}-shot needs more")
        picked.append(idx[torch.randperm(len(idx), generator=gen)[:shots]])
    return torch.cat(picked)


def fit_fewshot_probe(
    bank: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    l2: float = 1e-2,
    max_iter: int = 300,
) -> LinearProbe:
    """Probe with BN frozen to the unlabelled bank's statistics and an L-BFGS-fitted head."""
    probe = LinearProbe(features.shape[1], num_classes).to(features.device)
    probe.bn.running_mean.copy_(bank.mean(0))
    probe.bn.running_var.copy_(bank.var(0))
    probe.eval()
    with torch.no_grad():
        probe.head.weight.zero_()  # the convex optimum does not depend on the start
        x = probe.bn(features)
    opt = torch.optim.LBFGS(
        probe.head.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(probe.head(x), labels) + 0.5 * l2 * probe.head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return probe


@dataclass
class FewShotResult:
    shots: int
    mean: float
    std: float
    per_seed: list[float] = field(default_factory=list)


def fewshot_evaluate(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    shots: tuple[int, ...] | list[int] = DEFAULT_SHOTS,
    seeds: tuple[int, ...] | list[int] = DEFAULT_SEEDS,
    l2: float = 1e-2,
    progress: bool = True,
) -> tuple[list[FewShotResult], float]:
    """Mean and sample std of test top-1 over seeds, per shot count; and the seconds taken."""
    start = time.perf_counter()
    num_classes = num_classes_of(train_labels, test_labels)
    results = []
    bar = tqdm(
        total=len(shots) * len(seeds),
        desc="few-shot probes",
        unit="probe",
        disable=not progress,
        mininterval=progress_interval(),
    )
    for n in shots:
        accs = []
        for seed in seeds:
            bar.update(1)
            idx = sample_per_class(train_labels, n, seed)
            probe = fit_fewshot_probe(
                train_features, train_features[idx], train_labels[idx], num_classes, l2
            )
            accs.append(probe_accuracy(probe, test_features, test_labels))
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        results.append(FewShotResult(n, statistics.fmean(accs), std, accs))
    bar.close()
    return results, time.perf_counter() - start
