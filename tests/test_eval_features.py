"""Feature extraction options and the on-disk feature cache."""

import pytest
import torch
from eval_helpers import make_learnable_idx, save_tiny_checkpoint

from mimkit.data.sources import load_labelled_splits
from mimkit.errors import ConfigError
from mimkit.eval import cache as cache_mod
from mimkit.eval.cache import cached_features, weights_digest
from mimkit.eval.features import extract_features


@pytest.fixture()
def tiny(tmp_path):
    data = make_learnable_idx(tmp_path / "idx", n_train=24, n_test=8)
    folder, cfg, model = save_tiny_checkpoint(tmp_path, data)
    x_train, _, _, _ = load_labelled_splits(cfg.data, 1, (28, 28))
    return model.encoder, x_train, cfg, folder


def test_block_and_pool_options(tiny):
    encoder, x, cfg, _ = tiny
    m, s = cfg.data.mean, cfg.data.std
    last = extract_features(encoder, x, m, s, progress=False)
    assert torch.allclose(last, extract_features(encoder, x, m, s, progress=False, block=2))
    assert torch.allclose(
        last, extract_features(encoder, x, m, s, progress=False, pool=encoder.cfg.pool)
    )
    first = extract_features(encoder, x, m, s, progress=False, block=1)
    cls = extract_features(encoder, x, m, s, progress=False, pool="cls")
    assert not torch.allclose(last, first) and not torch.allclose(last, cls)
    assert last.shape == first.shape == (len(x), encoder.cfg.embed_dim)
    with pytest.raises(ConfigError, match="block must be between 1 and the encoder depth 2"):
        extract_features(encoder, x, m, s, progress=False, block=3)
    with pytest.raises(ConfigError, match="pool must be one of"):
        extract_features(encoder, x, m, s, progress=False, pool="max")


def test_second_evaluation_reads_the_cache(tiny, tmp_path, monkeypatch):
    encoder, x, cfg, _ = tiny
    calls = []
    real = cache_mod.extract_features

    def counting(*args, **kwargs):
        calls.append(kwargs.get("block"))
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_mod, "extract_features", counting)
    kw = dict(cache_dir=tmp_path / "cache", progress=False)
    first = cached_features(encoder, x, cfg.data.mean, cfg.data.std, **kw)
    again = cached_features(encoder, x, cfg.data.mean, cfg.data.std, **kw)
    assert len(calls) == 1 and torch.equal(first, again)
    # every input of the key gives a new entry: settings, data, weights
    cached_features(encoder, x, cfg.data.mean, cfg.data.std, block=1, **kw)
    cached_features(encoder, x, cfg.data.mean, cfg.data.std, pool="cls", **kw)
    cached_features(encoder, x[:-1], cfg.data.mean, cfg.data.std, **kw)
    cached_features(encoder, x, [0.5], cfg.data.std, **kw)
    assert len(calls) == 5
    before = weights_digest(encoder)
    with torch.no_grad():
        encoder.blocks[0].mlp.fc1.weight[0, 0] += 1.0
    assert weights_digest(encoder) != before
    changed = cached_features(encoder, x, cfg.data.mean, cfg.data.std, **kw)
    assert len(calls) == 6 and not torch.equal(changed, first)
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 6


def test_corrupt_cache_entry_is_recomputed(tiny, tmp_path):
    encoder, x, cfg, _ = tiny
    kw = dict(cache_dir=tmp_path / "cache", progress=False)
    first = cached_features(encoder, x, cfg.data.mean, cfg.data.std, **kw)
    (entry,) = (tmp_path / "cache").glob("*.safetensors")
    entry.write_bytes(b"not safetensors")
    again = cached_features(encoder, x, cfg.data.mean, cfg.data.std, **kw)
    assert torch.equal(first, again)
