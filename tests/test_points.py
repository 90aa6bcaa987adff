"""Point clouds: readers, sampling, augmentation, grouping, Chamfer distance, the two methods."""

import itertools
import logging
import struct

import numpy as np
import pytest
import torch

from mimkit.data.points import (
    augment_points,
    distance_histograms,
    load_point_folder,
    normalize_unit_sphere,
    read_cloud,
    sample_fixed,
)
from mimkit.data.shapes import SHAPES, make_shapes
from mimkit.errors import ConfigError, DataError
from mimkit.masking import MaskingConfig
from mimkit.models.config import ModelConfig, resolve_model_config
from mimkit.models.points import chamfer_l2, farthest_point_sample, gather_points, group_cloud
from mimkit.objectives.base import MethodOutput
from mimkit.objectives.point_cmae import PointCMAE, PointCMAESettings, co_hidden_agreement
from mimkit.objectives.point_mae import PointMAE, PointMAESettings


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: on shared cores a second thread only spins (10x slower under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_cfg():
    return resolve_model_config(
        ModelConfig(
            embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
            decoder_num_heads=2, cls_token=False, pool="avg",
        )
    )  # fmt: skip


# ---- grouping and Chamfer --------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_fps_centres_are_spread_out(seed):
    """FPS's defining property: after G picks no point is farther from its nearest centre than
    the closest two centres are from each other (each pick was the farthest point then)."""
    gen = torch.Generator().manual_seed(seed)
    points = torch.rand(3, 200, 3, generator=gen) * torch.tensor([1.0, 2.0, 0.5])
    ids = farthest_point_sample(points, 16)
    assert all(len(set(row.tolist())) == 16 for row in ids)
    centres = gather_points(points, ids)
    covering = torch.cdist(points, centres).min(dim=-1).values.max(dim=-1).values
    pair = torch.cdist(centres, centres) + torch.eye(16) * 1e9
    closest = pair.flatten(1).min(dim=-1).values
    assert (covering <= closest + 1e-6).all()
    # and far better spread than a random choice of as many points
    random_pick = gather_points(points, torch.randperm(200, generator=gen)[:16].expand(3, -1))
    random_cover = torch.cdist(points, random_pick).min(dim=-1).values.max(dim=-1).values
    assert (covering <= random_cover + 1e-6).all()


def test_groups_cover_a_cloud_of_separate_clusters_exactly():
    """8 tight clusters of 10 points, 8 groups of 10: each group is one whole cluster."""
    gen = torch.Generator().manual_seed(0)
    corners = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=3)))
    cloud = (corners[:, None] + 0.05 * torch.randn(8, 10, 3, generator=gen)).reshape(1, 80, 3)
    cloud = cloud[:, torch.randperm(80, generator=gen)]
    groups, centres = group_cloud(cloud, 8, 10)
    assert groups.shape == (1, 8, 10, 3) and centres.shape == (1, 8, 3)
    absolute = (groups + centres[:, :, None]).reshape(80, 3)
    # every point of the cloud is in exactly one group
    assert torch.equal(absolute.unique(dim=0), cloud[0].unique(dim=0))
    # each group is one cluster: its points are all near one corner
    nearest_corner = torch.cdist(groups + centres[:, :, None], corners[None]).argmin(-1)
    assert (nearest_corner == nearest_corner[..., :1]).all()
    # a centre is a point of the cloud and the first (zero-offset) member of its group
    assert torch.allclose(groups[:, :, 0], torch.zeros(1, 8, 3))


def brute_force_chamfer(a: np.ndarray, b: np.ndarray) -> float:
    total = 0.0
    for x, y in zip(a, b, strict=True):
        to_y = [min(float(((p - q) ** 2).sum()) for q in y) for p in x]
        to_x = [min(float(((q - p) ** 2).sum()) for p in x) for q in y]
        total += np.mean(to_y) + np.mean(to_x)
    return total / len(a)


def test_chamfer_l2_equals_the_brute_force_version():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 17, 3)).astype(np.float32)
    b = rng.normal(size=(6, 11, 3)).astype(np.float32)
    got = chamfer_l2(torch.from_numpy(a), torch.from_numpy(b)).item()
    assert got == pytest.approx(brute_force_chamfer(a, b), rel=1e-5)
    # batched over extra leading axes the same way
    batched = chamfer_l2(
        torch.from_numpy(a).view(2, 3, 17, 3), torch.from_numpy(b).view(2, 3, 11, 3)
    )
    assert batched.item() == pytest.approx(got, rel=1e-6)
    assert chamfer_l2(torch.from_numpy(a), torch.from_numpy(a)).item() == 0.0


# ---- the methods -----------------------------------------------------------------------------


def test_point_mae_hides_the_exact_count_and_rebuilds_only_hidden_groups():
    model = PointMAE(
        tiny_cfg(), MaskingConfig(ratio=0.6), PointMAESettings(groups=10, group_size=8)
    )
    clouds = torch.randn(3, 64, 3)
    mask = model.draw_mask(3, "cpu", torch.Generator().manual_seed(0))
    assert mask.ids_keep.shape == (3, 4) and mask.ids_masked.shape == (3, 6)  # int(10 * 0.4)
    for keep, hide in zip(mask.ids_keep, mask.ids_masked, strict=True):
        assert sorted(keep.tolist() + hide.tolist()) == list(range(10))
    out = model(clouds, mask=mask)
    assert isinstance(out, MethodOutput) and out.pred.shape == (3, 6, 8, 3)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    # the loss is the Chamfer distance to the hidden groups, nothing else
    groups, _ = group_cloud(clouds, 10, 8)
    hidden = torch.stack([g[i] for g, i in zip(groups, mask.ids_masked, strict=True)])
    assert out.loss.item() == pytest.approx(chamfer_l2(out.pred, hidden).item(), rel=1e-5)
    assert model.encode(clouds).shape == (3, 32)
    # features are deterministic: no mask, eval mode
    assert torch.equal(model.encode(clouds), model.encode(clouds))


def test_point_mae_refuses_grid_strategies_and_bad_groups():
    with pytest.raises(ConfigError, match="masking.strategy"):
        PointMAE(tiny_cfg(), MaskingConfig(strategy="block")).draw_mask(2, "cpu", None)
    with pytest.raises(ConfigError, match="method.groups"):
        PointMAESettings(groups=1).check(tiny_cfg())


def test_point_cmae_draws_two_masks_and_pulls_only_co_hidden_groups_together():
    settings = PointCMAESettings(groups=10, group_size=8)
    model = PointCMAE(tiny_cfg(), MaskingConfig(ratio=0.6), settings)
    pair = model.draw_mask(4, "cpu", torch.Generator().manual_seed(0))
    assert pair.first.ids_masked.shape == pair.second.ids_masked.shape == (4, 6)
    assert not torch.equal(pair.first.binary, pair.second.binary)  # two draws, not one
    rows = pair.select(slice(1, 3))
    assert torch.equal(rows.second.ids_keep, pair.second.ids_keep[1:3])
    out = model(torch.randn(2, 64, 3), mask=rows)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.decoder_1.head.weight.grad is not None
    assert model.decoder_2.head.weight.grad is not None
    # the agreement term: 0 when the features agree at co-hidden groups, whatever elsewhere
    m1, m2 = pair.first.select(slice(0, 1)), pair.second.select(slice(0, 1))
    base = torch.randn(1, 10, 5)
    f1, f2 = base.gather(1, m1.ids_masked[..., None].expand(-1, -1, 5)), None
    both = (m1.binary * m2.binary).bool()[0]
    other = base.clone()
    other[0, ~both] = torch.randn(int((~both).sum()), 5)  # differ where not hidden twice
    f2 = other.gather(1, m2.ids_masked[..., None].expand(-1, -1, 5))
    assert co_hidden_agreement(f1, m1, f2, m2).item() == pytest.approx(0.0, abs=1e-6)
    assert co_hidden_agreement(f1, m1, -f2, m2).item() == pytest.approx(2.0 if both.any() else 0.0)


# ---- readers ---------------------------------------------------------------------------------


def write_ply(path, xyz, normals=None, binary=None):
    props = ["x", "y", "z"] + (["nx", "ny", "nz"] if normals is not None else [])
    table = xyz if normals is None else np.concatenate([xyz, normals], 1)
    fmt = {None: "ascii", "<": "binary_little_endian", ">": "binary_big_endian"}[binary]
    head = f"ply\nformat {fmt} 1.0\ncomment made by a test\nelement vertex {len(xyz)}\n"
    head += "".join(f"property float {p}\n" for p in props)
    head += "element face 0\nproperty list uchar int vertex_indices\nend_header\n"
    if binary is None:
        body = "".join(" ".join(f"{v:.6f}" for v in row) + "\n" for row in table).encode()
    else:
        body = b"".join(struct.pack(binary + "f" * len(row), *row) for row in table)
    path.write_bytes(head.encode() + body)


@pytest.mark.parametrize("binary", [None, "<", ">"])
def test_ply_ascii_and_binary_read_points_and_normals(tmp_path, binary):
    rng = np.random.default_rng(0)
    xyz, normals = rng.normal(size=(20, 3)).astype(np.float32), rng.normal(size=(20, 3))
    write_ply(tmp_path / "a.ply", xyz, normals.astype(np.float32), binary)
    cloud = read_cloud(tmp_path / "a.ply")
    np.testing.assert_allclose(cloud.xyz, xyz, atol=1e-5)
    np.testing.assert_allclose(cloud.normals, normals, atol=1e-5)


def test_text_npz_npy_and_off_clouds(tmp_path):
    rng = np.random.default_rng(0)
    table = np.concatenate([rng.normal(size=(9, 6)), rng.integers(0, 4, (9, 1))], 1)
    (tmp_path / "a.txt").write_text("\n".join(",".join(map(str, r)) for r in table))
    cloud = read_cloud(tmp_path / "a.txt")
    np.testing.assert_allclose(cloud.xyz, table[:, :3], rtol=1e-6)
    assert (
        cloud.normals.shape == (9, 3) and cloud.labels.tolist() == table[:, 6].astype(int).tolist()
    )
    (tmp_path / "b.xyz").write_text("\n".join(" ".join(map(str, r)) for r in table[:, :3]))
    assert read_cloud(tmp_path / "b.xyz").normals is None
    np.savez(tmp_path / "c.npz", points=table[:, :3], normals=table[:, 3:6], labels=table[:, 6])
    cloud = read_cloud(tmp_path / "c.npz")
    assert cloud.xyz.shape == (9, 3) and cloud.labels.shape == (9,)
    np.save(tmp_path / "d.npy", table[:, :3])
    assert read_cloud(tmp_path / "d.npy").xyz.shape == (9, 3)
    # an OFF mesh (ModelNet's header quirk: counts on the OFF line) is sampled on its surface
    square = "OFF4 2 0\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n3 0 1 2\n3 0 2 3\n"
    (tmp_path / "e.off").write_text(square)
    surface = read_cloud(tmp_path / "e.off", points=500).xyz
    assert surface.shape == (500, 3) and (surface[:, 2] == 0).all()
    assert (surface[:, :2] >= 0).all() and (surface[:, :2] <= 1).all()


BAD_FILES = {
    "short.ply": b"ply\nformat binary_little_endian 1.0\nelement vertex 100\nproperty float x\n"
    b"property float y\nproperty float z\nend_header\n\x00\x00",
    "words.txt": b"one two three\nfour five six\n",
    "flat.npy": None,  # a 1-D array
    "pickled.npy": None,  # an object array: never unpickled
    "empty.off": b"OFF\n",
    "nan.xyz": b"nan 0 0\n1 1 1\n",
}


def write_bad(folder):
    folder.mkdir(parents=True)
    for name, data in BAD_FILES.items():
        if name == "flat.npy":
            np.save(folder / name, np.zeros(5))
        elif name == "pickled.npy":
            np.save(folder / name, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        else:
            (folder / name).write_bytes(data)


def test_bad_cloud_files_are_skipped_counted_and_named_on_one_line(tmp_path, caplog):
    write_bad(tmp_path / "train" / "bad")
    np.save(tmp_path / "train" / "bad" / "good.npy", np.random.default_rng(0).normal(size=(50, 3)))
    with caplog.at_level(logging.WARNING):
        clouds, labels, skipped = load_point_folder(tmp_path / "train", 32)
    assert clouds.shape == (1, 32, 3) and labels.tolist() == [0]
    assert skipped == len(BAD_FILES)
    lines = [r.getMessage() for r in caplog.records]
    for name in BAD_FILES:
        named = [line for line in lines if name in line]
        assert len(named) == 1 and "\n" not in named[0], name
    for name in BAD_FILES:
        with pytest.raises(DataError, match=name):
            read_cloud(tmp_path / "train" / "bad" / name)


def test_a_folder_of_only_bad_clouds_is_one_error(tmp_path):
    write_bad(tmp_path / "train" / "bad")
    with pytest.raises(DataError, match="no readable point clouds"):
        load_point_folder(tmp_path / "train", 32)


# ---- normalisation, sampling, augmentation, synthetic shapes -----------------------------------


def test_unit_sphere_and_fixed_size_sampling():
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(100, 3)) * 7 + 3
    unit = normalize_unit_sphere(xyz)
    assert np.allclose(unit.mean(0), 0, atol=1e-9)
    assert np.linalg.norm(unit, axis=1).max() == pytest.approx(1.0)
    fewer, more = sample_fixed(xyz, 30, rng), sample_fixed(xyz, 250, rng)
    assert fewer.shape == (30, 3) and len(np.unique(fewer, axis=0)) == 30
    assert more.shape == (250, 3) and len(np.unique(more, axis=0)) == 100  # all, then repeats


def test_augmentation_turns_about_the_up_axis_and_is_the_same_for_any_split_of_the_batch():
    clouds = torch.randn(6, 40, 3)
    turned = augment_points(clouds, torch.Generator().manual_seed(0), (1, 1), 0.0, True, 0.0)
    assert torch.allclose(turned[..., 2], clouds[..., 2])  # z untouched
    assert torch.allclose(turned[..., :2].norm(dim=-1), clouds[..., :2].norm(dim=-1), atol=1e-5)
    assert not torch.allclose(turned, clouds)
    whole = augment_points(clouds, torch.Generator().manual_seed(1), jitter=0.0)
    part = augment_points(
        clouds[2:4], torch.Generator().manual_seed(1), jitter=0.0, rows=slice(2, 4), global_batch=6
    )
    assert torch.allclose(part, whole[2:4])


def test_synthetic_shapes_are_seeded_and_split(tmp_path):
    assert len(SHAPES) >= 10
    a = make_shapes(tmp_path / "a", train=2, test=1, points=64, seed=3)
    b = make_shapes(tmp_path / "b", train=2, test=1, points=64, seed=3)
    assert sorted(p.name for p in (a / "train").iterdir()) == sorted(SHAPES)
    assert len(list((a / "test").rglob("*.npy"))) == len(SHAPES)
    for f in (a / "train").rglob("*.npy"):
        assert np.array_equal(np.load(f), np.load(b / f.relative_to(a)))
        assert np.load(f).shape == (64, 3)
    assert not np.array_equal(
        np.load(a / "train/torus/00000.npy"), np.load(a / "test/torus/00000.npy")
    )


def test_reconstructions_render_as_a_grid_of_3d_scatters(tmp_path):
    pytest.importorskip("matplotlib")
    from mimkit.inspect.points import render_point_reconstructions

    model = PointMAE(tiny_cfg(), MaskingConfig(ratio=0.6), PointMAESettings(groups=6, group_size=8))
    clouds = torch.randn(2, 48, 3)
    points = model.reconstruct_points(clouds, model.draw_mask(2, "cpu", None))
    assert points["visible"].shape == (2, 2 * 8, 3)  # int(6 * 0.4) groups of 8
    assert points["hidden"].shape == points["predicted"].shape == (2, 4 * 8, 3)
    # the hidden and visible points are the cloud's own points, back in absolute coordinates
    seen = torch.cat([points["visible"], points["hidden"]], 1)
    gaps = ((seen[:, :, None] - clouds[:, None]) ** 2).sum(-1).min(dim=-1).values
    assert gaps.max() < 1e-10
    path = render_point_reconstructions(points, tmp_path / "r.png")
    assert path.stat().st_size > 1000


def test_distance_histograms_are_fixed_size_and_blind_to_order_and_rotation():
    clouds = torch.from_numpy(
        np.stack(
            [normalize_unit_sphere(np.random.default_rng(i).normal(size=(80, 3))) for i in range(3)]
        )
    ).float()
    f = distance_histograms(clouds, bins=16)
    assert f.shape == (3, 32) and torch.allclose(f.view(3, 2, 16).sum(-1), torch.ones(3, 2))
    turned = augment_points(clouds, torch.Generator().manual_seed(0), (1, 1), 0.0, True, 0.0)
    shuffled = turned[:, torch.randperm(80)]
    same = distance_histograms(shuffled, bins=16)
    # a distance on a bin edge may move by rounding: allow one point (or pair) of difference
    assert (f - same).abs().max() <= 2 / 80**2 + 1 / 80
    assert not torch.allclose(f[0], f[1])
