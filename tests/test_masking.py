import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mimkit.masking import mask_from_noise, num_kept, random_masking


@settings(max_examples=50, deadline=None)
@given(batch=st.integers(1, 4), n=st.integers(1, 300), ratio=st.floats(0.0, 0.99))
def test_mask_counts_and_partition(batch, n, ratio):
    mask = random_masking(batch, n, ratio, generator=torch.Generator().manual_seed(1))
    keep = num_kept(n, ratio)
    assert mask.ids_keep.shape == (batch, keep)
    assert mask.ids_masked.shape == (batch, n - keep)
    # kept and masked ids partition 0..n-1 for every sample
    both = torch.cat([mask.ids_keep, mask.ids_masked], dim=1).sort(dim=1).values
    assert torch.equal(both, torch.arange(n).expand(batch, n))
    binary = mask.binary
    assert torch.equal(binary.sum(1), torch.full((batch,), float(n - keep)))
    assert torch.all(binary.gather(1, mask.ids_keep) == 0)
    assert torch.all(binary.gather(1, mask.ids_masked) == 1)


def test_same_seed_same_mask_and_samples_differ():
    a = random_masking(8, 49, 0.75, generator=torch.Generator().manual_seed(3))
    b = random_masking(8, 49, 0.75, generator=torch.Generator().manual_seed(3))
    c = random_masking(8, 49, 0.75, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.ids_keep, b.ids_keep)
    assert not torch.equal(a.ids_keep, c.ids_keep)
    # per-sample masking: not every sample hides the same patches
    assert len({tuple(row.sort().values.tolist()) for row in a.ids_keep}) > 1


def test_masking_ignores_global_rng():
    torch.manual_seed(0)
    a = random_masking(2, 16, 0.5, generator=torch.Generator().manual_seed(9))
    torch.manual_seed(123)
    b = random_masking(2, 16, 0.5, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a.ids_restore, b.ids_restore)


def test_ids_restore_inverts_shuffle():
    noise = torch.rand(3, 20)
    mask = mask_from_noise(noise, 0.6)
    shuffled = torch.cat([mask.ids_keep, mask.ids_masked], dim=1)
    assert torch.equal(shuffled.gather(1, mask.ids_restore), torch.arange(20).expand(3, 20))
    # lowest-noise patches are the kept ones
    assert torch.equal(mask.ids_keep.sort(1).values, noise.argsort(1)[:, :8].sort(1).values)
