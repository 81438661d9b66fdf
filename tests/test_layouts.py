"""Public data sets load in the layout they are downloaded in: DRIVE, STARE, CHASE_DB1, HRF, images/ + masks/.

Each layout is built in miniature under its real file names, from 64-pixel synthetic fundus images.
"""
from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.training.data import DatasetError, load_dataset
from engine.training.layouts import identifier
from engine.training.synthetic import synthetic_sample
from storage.archives import unpack_dataset_zip

_FORMATS = {".tif": "TIFF", ".gif": "GIF", ".ppm": "PPM", ".png": "PNG", ".jpg": "JPEG"}

DRIVE = [("images/{}_training.tif", "image"), ("1st_manual/{}_manual1.gif", "vessels"),
         ("2nd_manual/{}_manual2.gif", "vessels"), ("mask/{}_training_mask.gif", "fov")]
STARE = [("stare-images/{}.ppm", "image"), ("labels-ah/{}.ah.ppm", "vessels"), ("labels-vk/{}.vk.ppm", "vessels")]
CHASE = [("Image_{}.jpg", "image"), ("Image_{}_1stHO.png", "vessels"), ("Image_{}_2ndHO.png", "vessels")]

# name: (identifiers, [(file name template, what it holds)]); the templates are the downloads' own names.
LAYOUT_FILES = {
    "DRIVE": (("21", "22"), DRIVE),
    "DRIVE download": (("21", "22"), [("DRIVE/training/" + name, what) for name, what in DRIVE]
                       + [("DRIVE/test/" + name.replace("training", "test"), what) for name, what in DRIVE]),
    "STARE": (("im0001", "im0002"), STARE),
    "STARE .gz, one annotator": (("im0001", "im0002"), [("stare-images/{}.ppm.gz", "image"),
                                                        ("labels-vk/{}.vk.ppm.gz", "vessels")]),
    "STARE one folder down": (("im0001", "im0002"), [("stare/" + name, what) for name, what in STARE]),
    "CHASE_DB1": (("01L", "01R"), CHASE),
    "CHASE_DB1 two folders down": (("01L", "01R"), [("data/CHASEDB1/" + name, what) for name, what in CHASE]),
    "HRF": (("01_dr", "02_h"), [("images/{}.JPG", "image"), ("manual1/{}.tif", "vessels"), ("mask/{}_mask.tif", "fov")]),
    "images/ + masks/": (("a", "b"), [("images/{}.png", "image"), ("masks/{}_mask.png", "vessels")]),
}

# name, layout, ids, vessel annotation files, FOV files (None: estimated), the summary's annotation
CASES = [
    ("DRIVE", "DRIVE", ["21", "22"], ["21_manual1.gif", "22_manual1.gif"],
     ["21_training_mask.gif", "22_training_mask.gif"], "1st_manual/ (first observer), 2nd_manual/ not used"),
    ("DRIVE download", "DRIVE", ["21", "22"], ["21_manual1.gif", "22_manual1.gif"],
     ["21_training_mask.gif", "22_training_mask.gif"], "1st_manual/ (first observer), 2nd_manual/ not used"),
    ("STARE", "STARE", ["im0001", "im0002"], ["im0001.ah.ppm", "im0002.ah.ppm"], [None, None],
     "labels-ah/ (Adam Hoover), labels-vk/ not used"),
    ("STARE .gz, one annotator", "STARE", ["im0001", "im0002"], ["im0001.vk.ppm.gz", "im0002.vk.ppm.gz"],
     [None, None], "labels-vk/ (Valentina Kouznetsova)"),
    ("STARE one folder down", "STARE", ["im0001", "im0002"], ["im0001.ah.ppm", "im0002.ah.ppm"], [None, None],
     "labels-ah/ (Adam Hoover), labels-vk/ not used"),
    ("CHASE_DB1", "CHASE_DB1", ["Image_01L", "Image_01R"], ["Image_01L_1stHO.png", "Image_01R_1stHO.png"],
     [None, None], "*_1stHO (observer 1), *_2ndHO not used"),
    ("CHASE_DB1 two folders down", "CHASE_DB1", ["Image_01L", "Image_01R"],
     ["Image_01L_1stHO.png", "Image_01R_1stHO.png"], [None, None], "*_1stHO (observer 1), *_2ndHO not used"),
    ("HRF", "HRF", ["01_dr", "02_h"], ["01_dr.tif", "02_h.tif"], ["01_dr_mask.tif", "02_h_mask.tif"], "manual1/"),
    ("images/ + masks/", "images/ + masks/", ["a", "b"], ["a_mask.png", "b_mask.png"], [None, None], "masks/"),
]
_IDS = [case[0] for case in CASES]


def _encode(array: np.ndarray, name: str) -> bytes:
    """The file's bytes in the format its name says; ``.gz`` names are gzip-compressed."""
    plain = name[:-3] if name.endswith(".gz") else name
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=_FORMATS[Path(plain).suffix.lower()])
    return gzip.compress(buffer.getvalue()) if plain != name else buffer.getvalue()


def _files(name: str, seed: int = 0, extra_images: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Relative path -> bytes of the miniature data set ``name`` (plus photographs without annotations)."""
    ids, templates = LAYOUT_FILES[name]
    rng = np.random.default_rng(seed)
    files = {}
    for key in ids + extra_images:
        image, vessels, fov = synthetic_sample(64, rng)
        arrays = {"image": image, "vessels": np.dstack([vessels * 255] * 3), "fov": fov * 255}
        for template, what in templates:
            if key in ids or what == "image":
                files[template.format(key)] = _encode(arrays[what], template.format(key))
    return files


def _build(root: Path, name: str, **options) -> Path:
    for relative, data in _files(name, **options).items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    return root


def _fov_names(ds) -> list[str | None]:
    return [s.fov_path.name if s.fov_path else None for s in ds.pairs]


@pytest.mark.parametrize("name, layout, ids, vessels, fovs, annotation", CASES, ids=_IDS)
def test_layout_is_named(tmp_path, name, layout, ids, vessels, fovs, annotation):
    assert load_dataset(_build(tmp_path, name)).layout == layout


@pytest.mark.parametrize("name, layout, ids, vessels, fovs, annotation", CASES, ids=_IDS)
def test_summary_names_the_layout(tmp_path, name, layout, ids, vessels, fovs, annotation):
    assert load_dataset(_build(tmp_path, name)).summary()["layout"] == layout


@pytest.mark.parametrize("name, layout, ids, vessels, fovs, annotation", CASES, ids=_IDS)
def test_every_photograph_is_paired(tmp_path, name, layout, ids, vessels, fovs, annotation):
    assert [s.id for s in load_dataset(_build(tmp_path, name)).pairs] == ids


@pytest.mark.parametrize("name, layout, ids, vessels, fovs, annotation", CASES, ids=_IDS)
def test_the_chosen_annotation_is_used(tmp_path, name, layout, ids, vessels, fovs, annotation):
    assert [s.mask_path.name for s in load_dataset(_build(tmp_path, name)).pairs] == vessels


@pytest.mark.parametrize("name, layout, ids, vessels, fovs, annotation", CASES, ids=_IDS)
def test_fov_masks_are_used_where_the_layout_has_them(tmp_path, name, layout, ids, vessels, fovs, annotation):
    assert _fov_names(load_dataset(_build(tmp_path, name))) == fovs


@pytest.mark.parametrize("name, layout, ids, vessels, fovs, annotation", CASES, ids=_IDS)
def test_summary_says_which_annotation_is_used(tmp_path, name, layout, ids, vessels, fovs, annotation):
    assert load_dataset(_build(tmp_path, name)).summary()["annotation"] == annotation


def test_drive_download_is_read_as_its_training_half(tmp_path):
    assert load_dataset(_build(tmp_path, "DRIVE download")).root == tmp_path / "DRIVE" / "training"


def test_hrf_upper_case_jpg_is_listed(tmp_path):
    assert load_dataset(_build(tmp_path, "HRF")).pairs[0].image_path.name == "01_dr.JPG"


def test_gz_sizes_are_read_from_the_compressed_header(tmp_path):
    assert load_dataset(_build(tmp_path, "STARE .gz, one annotator")).summary()["sizes"] == ["64x64"]


@pytest.mark.parametrize("part", [0, 1])  # 0: the photograph, 1: its vessel labels
def test_gz_files_decode_like_the_plain_ones(tmp_path, part):
    plain = load_dataset(_build(tmp_path / "plain", "STARE")).raw(0)[part]
    compressed = load_dataset(_build(tmp_path / "gz", "STARE .gz, one annotator")).raw(0)[part]
    assert np.array_equal(compressed, plain)


@pytest.mark.parametrize("name, expected", [
    ("im0001.ppm.gz", "im0001"), ("im0001.ah.ppm.gz", "im0001"), ("IM0002.VK.PPM.GZ", "IM0002"),
    ("Image_01L_1stHO.png", "Image_01L"), ("01_dr.JPG", "01_dr"),
])
def test_identifier_strips_gz_and_annotation_suffixes(name, expected):
    assert identifier(name) == expected


def test_stare_leaves_out_unlabelled_photographs(tmp_path):
    ds = load_dataset(_build(tmp_path, "STARE", extra_images=("im0003", "im0004")))
    assert [s.id for s in ds.pairs] == ["im0001", "im0002"]


def test_summary_says_how_many_photographs_were_left_out(tmp_path):
    ds = load_dataset(_build(tmp_path, "STARE", extra_images=("im0003",)))
    assert ds.summary()["notes"] == ["1 photograph in stare-images/ has no vessel labels in labels-ah/ and is left out."]


def test_chase_photograph_without_first_observer_is_named(tmp_path):
    _build(tmp_path, "CHASE_DB1")
    (tmp_path / "Image_01R_1stHO.png").unlink()
    with pytest.raises(DatasetError, match=r"no vessel mask in .*/ for Image_01R\.jpg"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("looked_for", [
    "DRIVE (images/, 1st_manual/, mask/)", "STARE (stare-images/ with labels-ah/ or labels-vk/)",
    "CHASE_DB1 (Image_01L.jpg beside Image_01L_1stHO.png in one folder)", "HRF (images/, manual1/, mask/)",
    "images/ + masks/ (optionally fov/)",
])
def test_unrecognised_folder_names_the_layouts_looked_for(tmp_path, looked_for):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "eye.png").write_bytes(_encode(synthetic_sample(64, np.random.default_rng(0))[0], "eye.png"))
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path)
    assert looked_for in str(err.value)


def test_two_data_sets_side_by_side_are_refused_with_their_names(tmp_path):
    _build(tmp_path / "STARE", "STARE")
    _build(tmp_path / "HRF", "HRF")
    with pytest.raises(DatasetError, match=r"several data sets \(HRF/, STARE/\): choose one"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("name, layout", [("STARE one folder down", "STARE"), ("CHASE_DB1 two folders down",
                                                                                 "CHASE_DB1"), ("HRF", "HRF")])
def test_zip_upload_of_a_download_is_recognised(home, name, layout):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for relative, data in _files(name).items():
            zf.writestr("download/" + relative, data)
    assert load_dataset(unpack_dataset_zip(buffer.getvalue(), "download.zip")).layout == layout


@pytest.mark.parametrize("name, shown", [
    ("CHASE_DB1", r"Layout: **CHASE_DB1** · vessels from \*\_1stHO (observer 1), \*\_2ndHO not used"),
    ("STARE", "with FOV mask: 0 (the others' is estimated)"),
])
def test_train_page_summary_names_layout_and_annotation(home, tmp_path, name, shown):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/train.py").run()
    at.radio(key="train_source").set_value("Folder path").run()
    at.text_input(key="train_folder").input(str(_build(tmp_path / "download", name))).run()
    assert any(shown in m.value for m in at.markdown), [m.value for m in at.markdown]
