"""Data sets: pairing by identifier in both layouts, clear errors, preprocessing, sampling, synthetic data."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.training.data import DatasetError, load_dataset
from engine.training.layouts import identifier
from engine.training.preprocess import normalization_stats, prepare_channels, preprocess
from engine.training.sampling import PatchSampler, split_indices
from engine.training.synthetic import make_synthetic_dataset
from engine.errors import UserError


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)
    if mode:
        img = img.convert(mode)
    img.save(path)


def _image(h=40, w=48, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _mask(h=40, w=48):
    m = np.zeros((h, w), np.uint8)
    m[10:14, :] = 255
    return m


@pytest.mark.parametrize("name, expected", [
    ("21_training.tif", "21"), ("21_manual1.gif", "21"), ("21_training_mask.gif", "21"),
    ("name.png", "name"), ("name_mask.png", "name"), ("name_1stHO.png", "name"), ("name.ah.ppm", "name"),
    ("im0001.vk.ppm", "im0001"), ("Image_01L_2ndHO.png", "Image_01L"), ("01_dr_mask.tif", "01_dr"),
    ("test.png", "test"), ("eye-fov.bmp", "eye"),
])
def test_identifier_strips_annotation_suffixes(name, expected):
    assert identifier(name) == expected


def test_drive_layout_pairs_the_three_files(tmp_path):
    for i in (21, 22):
        _save(tmp_path / "images" / f"{i}_training.tif", _image(seed=i))
        _save(tmp_path / "1st_manual" / f"{i}_manual1.gif", _mask(), "P")
        _save(tmp_path / "mask" / f"{i}_training_mask.gif", np.full((40, 48), 255, np.uint8), "P")
        _save(tmp_path / "2nd_manual" / f"{i}_manual2.gif", _mask(), "P")  # ignored
    ds = load_dataset(tmp_path)
    assert (ds.layout, [s.id for s in ds.pairs]) == ("DRIVE", ["21", "22"])
    assert ds.pairs[0].mask_path.name == "21_manual1.gif" and ds.pairs[0].fov_path.name == "21_training_mask.gif"


@pytest.mark.parametrize("image_name, mask_name, mode", [
    ("a.png", "a_mask.png", "L"), ("b.jpg", "b_1stHO.png", "1"), ("c.ppm", "c.ah.ppm", "L"),
    ("d.bmp", "d.bmp", "L"), ("e.png", "e.png", "I;16"), ("f.tif", "f_mask.gif", "P"),
])
def test_generic_layout_formats(tmp_path, image_name, mask_name, mode):
    image = _image()
    if mode == "I;16":
        Image.fromarray((image[:, :, 0].astype(np.uint16) * 257)).save(tmp_path / "x.png")
        (tmp_path / "images").mkdir()
        (tmp_path / "x.png").rename(tmp_path / "images" / image_name)
        mode = "L"
    else:
        _save(tmp_path / "images" / image_name, image)
    _save(tmp_path / "masks" / mask_name, _mask(), mode)
    ds = load_dataset(tmp_path)
    img, mask, fov = ds.raw(0)
    assert img.shape == (40, 48, 3) and set(np.unique(mask)) == {0, 1} and mask[12].all()
    assert fov.all()  # without a FOV mask the whole image counts


def test_rgba_image_and_boolean_fov(tmp_path):
    rgba = np.dstack([_image(), np.full((40, 48), 128, np.uint8)])
    _save(tmp_path / "images" / "p.png", rgba)
    _save(tmp_path / "masks" / "p.png", (_mask() // 255).astype(np.uint8))  # {0, 1}
    fov = np.zeros((40, 48), bool)
    fov[5:35, 5:40] = True
    (tmp_path / "fov").mkdir()
    Image.fromarray(fov).save(tmp_path / "fov" / "p_fov.png")
    _, mask, fov_read = load_dataset(tmp_path).raw(0)
    assert mask.sum() == 4 * 48 and fov_read.sum() == 30 * 35


@pytest.mark.parametrize("setup, words", [
    ("unpaired_image", ["b.png", "no vessel mask"]),
    ("orphan_mask", ["z_mask.png", "no image"]),
    ("size", ["b_mask.png", "b.png", "40×32"]),
    ("empty", ["empty"]),
    ("no_masks", ["masks/"]),
    ("missing_fov", ["b.png", "field-of-view"]),
    ("duplicate", ["b.png", "b.jpg"]),
])
def test_dataset_errors_name_the_files(tmp_path, setup, words):
    (tmp_path / "images").mkdir()
    if setup != "no_masks":
        (tmp_path / "masks").mkdir()
    if setup not in ("empty", "no_masks"):
        _save(tmp_path / "images" / "a.png", _image())
        _save(tmp_path / "masks" / "a_mask.png", _mask())
        _save(tmp_path / "images" / "b.png", _image())
    if setup in ("orphan_mask", "size", "missing_fov", "duplicate"):
        _save(tmp_path / "masks" / "b_mask.png", _mask(32, 40) if setup == "size" else _mask())
    if setup == "orphan_mask":
        _save(tmp_path / "masks" / "z_mask.png", _mask())
    if setup == "missing_fov":
        _save(tmp_path / "fov" / "a_fov.png", _mask())
    if setup == "duplicate":
        _save(tmp_path / "images" / "b.jpg", _image())
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_missing_folder_is_a_sentence(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")


def test_real_drive_folder(drive_dir):
    ds = load_dataset(drive_dir)
    assert ds.layout == "DRIVE" and len(ds) == 20 and all(s.fov_path for s in ds.pairs)
    assert load_dataset(drive_dir.parent).root == ds.root  # the download's top folder works too


@pytest.mark.parametrize("channel, n", [("green", 1), ("gray", 1), ("rgb", 3)])
@pytest.mark.parametrize("clahe", [True, False])
def test_preprocess_channels_and_zscore(channel, n, clahe):
    image = _image(64, 64)
    fov = np.zeros((64, 64), np.uint8)
    fov[8:56, 8:56] = 1
    x = preprocess(image, fov, channel, clahe, "zscore")
    assert x.shape == (n, 64, 64) and x.dtype == np.float32
    assert np.allclose(x[:, fov > 0].mean(axis=1), 0, atol=1e-4) and np.allclose(x[:, fov > 0].std(axis=1), 1, atol=1e-3)


def test_preprocess_unit_normalisation_and_bad_names():
    x = prepare_channels(_image(), "green", clahe=False)
    assert x.min() >= 0 and x.max() <= 1
    mean, std = normalization_stats(x, np.ones((40, 48)), "unit")
    assert float(mean.sum()) == 0 and float(std.min()) == 1
    with pytest.raises(UserError, match="channel"):
        prepare_channels(_image(), "blue")
    with pytest.raises(UserError, match="normalization"):
        normalization_stats(x, np.ones((40, 48)), "max")


@pytest.mark.parametrize("n, fraction, n_val", [(2, 0.2, 1), (10, 0.2, 2), (20, 0.2, 4), (5, 0.9, 4)])
def test_split_is_seeded_and_disjoint(n, fraction, n_val):
    train, val = split_indices(n, fraction, seed=3)
    assert (len(val), sorted(train + val)) == (n_val, list(range(n)))
    assert split_indices(n, fraction, seed=3) == (train, val)


UNIT_STATS = (np.zeros((1, 1, 1), np.float32), np.ones((1, 1, 1), np.float32))


@pytest.mark.parametrize("max_zoom, any_angle", [(1.0, False), (1.25, True), (2.0, False), (1.0, True)])
def test_patch_sampler_keeps_image_and_mask_aligned(max_zoom, any_angle):
    mask = np.zeros((50, 70), np.uint8)
    mask[20:24, :] = 1
    mask[:, 30:33] = 1
    image = mask[None].astype(np.float32) * 0.8 + 0.1  # vessels bright, so alignment is checkable
    sampler = PatchSampler([image], [mask], [np.ones_like(mask)], [UNIT_STATS], patch_size=32, augment=True,
                           max_zoom=max_zoom, any_angle=any_angle)
    x, y = sampler.sample(16, np.random.default_rng(0))
    assert x.shape == (16, 1, 32, 32) and y.shape == (16, 1, 32, 32) and set(np.unique(y)) <= {0.0, 1.0}
    for xi, yi in zip(x, y):
        if 0 < yi.sum() < yi.size:
            assert xi[yi == 1].min() > xi[yi == 0].max()  # monotone jitter keeps vessels brighter
    x2, _ = sampler.sample(16, np.random.default_rng(0))
    assert np.array_equal(x, x2)


def _stripes(period: int = 12, width: int = 4, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((size, size), np.uint8)
    for x in range(0, size, period):
        mask[:, x:x + width] = 1
    return mask[None].astype(np.float32) * 0.8 + 0.1, mask


def test_patch_sampler_rotates_by_any_angle_only_when_asked():
    image, mask = _stripes()

    def oblique(any_angle: bool) -> int:  # patches whose stripes are neither vertical nor horizontal
        sampler = PatchSampler([image], [mask], [np.ones_like(mask)], [UNIT_STATS], 32, any_angle=any_angle)
        _, y = sampler.sample(32, np.random.default_rng(1))
        return sum(not ((m == m[:1]).all() or (m == m[:, :1]).all()) for m in y[:, 0])

    assert oblique(False) == 0
    assert oblique(True) >= 24


def _inner_runs(line: np.ndarray) -> list[int]:
    """Lengths of the runs of 1s that do not touch either end of ``line``."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], line, [0]])))
    return [int(e - s) for s, e in zip(edges[::2], edges[1::2]) if s > 0 and e < line.size]


def test_patch_sampler_zoom_changes_vessel_width_within_its_range():
    image, mask = _stripes(period=16, width=8, size=192)
    centre = np.zeros_like(mask)
    centre[80:112, 80:112] = 1  # far enough from the edges that no patch reaches a reflected stripe

    def widths(max_zoom: float) -> list[int]:  # widths of the stripes crossing the middle of each patch
        sampler = PatchSampler([image], [mask], [centre], [UNIT_STATS], 48, max_zoom=max_zoom)
        _, y = sampler.sample(40, np.random.default_rng(2))
        return [w for m in y[:, 0] for w in _inner_runs(m[24] if (m == m[:1]).all() else m[:, 24])]

    assert set(widths(1.0)) == {8}
    zoomed = widths(2.0)
    assert min(zoomed) <= 6 and max(zoomed) >= 11  # narrower and wider than the 8 px drawn
    assert 3 <= min(zoomed) and max(zoomed) <= 17  # but no more than 2x either way (±1 px of interpolation)


def test_patch_sampler_refuses_a_zoom_below_one():
    image, mask = _stripes()
    with pytest.raises(UserError, match="max_zoom must be at least 1"):
        PatchSampler([image], [mask], [np.ones_like(mask)], [UNIT_STATS], 32, max_zoom=0.5)


def test_patch_larger_than_image_is_refused():  # issue 6: a sentence before training starts, not padding
    img = np.random.default_rng(0).random((1, 20, 20)).astype(np.float32)
    stats = (np.zeros((1, 1, 1), np.float32), np.ones((1, 1, 1), np.float32))
    with pytest.raises(DatasetError, match="patch_size 32 is larger than the smallest image .20×20"):
        PatchSampler([img], [np.zeros((20, 20), np.uint8)], [np.ones((20, 20), np.uint8)], [stats], 32)


def test_synthetic_dataset_is_realistic_and_seeded(tmp_path):
    make_synthetic_dataset(tmp_path / "a", n_images=3, size=96, seed=5)
    make_synthetic_dataset(tmp_path / "b", n_images=3, size=96, seed=5)
    ds = load_dataset(tmp_path / "a")
    assert ds.layout == "images/ + masks/" and len(ds) == 3 and all(s.fov_path for s in ds.pairs)
    image, mask, fov = ds.raw(0)
    assert fov[0, 0] == 0 and fov[48, 48] == 1 and image[0, 0].max() == 0
    assert 0.02 < mask[fov > 0].mean() < 0.3 and not mask[fov == 0].any()
    green = image[:, :, 1].astype(float)
    assert green[(mask > 0)].mean() < green[(mask == 0) & (fov > 0)].mean()  # vessels are darker
    for name in ("images", "masks", "fov"):
        assert (tmp_path / "a" / name / "synth_001.png").read_bytes() == (tmp_path / "b" / name / "synth_001.png").read_bytes()


def test_dataset_caches_preprocessed_arrays(tmp_path):
    ds = load_dataset(make_synthetic_dataset(tmp_path, n_images=2, size=64))
    assert ds.arrays(0) is ds.arrays(0)
    assert ds.arrays(0, "rgb")[0].shape == (3, 64, 64)
    assert ds.summary()["n_images"] == 2
