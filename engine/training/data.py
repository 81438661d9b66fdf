"""Data sets of fundus images with vessel masks: finding, pairing, preprocessing, sampling.

Public data sets are read in the layout they are downloaded in (:data:`LAYOUTS` names them):

- DRIVE: ``images/``, ``1st_manual/`` (vessels), ``mask/`` (field of view); ``2nd_manual/`` is not used.
  A folder holding ``training/`` (the download's top folder) is read as its ``training/`` half.
- STARE: ``stare-images/`` (``im0001.ppm``) and ``labels-ah/`` (``im0001.ah.ppm``) or ``labels-vk/``
  (``im0001.vk.ppm``); Hoover's ``labels-ah/`` is used when both are there. Photographs without a
  label (the full set has 400) are left out. No field-of-view masks.
- CHASE_DB1: one folder of ``Image_01L.jpg`` with ``Image_01L_1stHO.png`` (first observer, used) and
  ``Image_01L_2ndHO.png``. No field-of-view masks.
- HRF: ``images/`` (``01_dr.JPG``), ``manual1/`` (``01_dr.tif``), ``mask/`` (``01_dr_mask.tif``).
- images/ + masks/: ``images/``, ``masks/`` (vessels), optional ``fov/``.

Any file may also be gzip-compressed (``im0001.ppm.gz``). Folder names are matched regardless of case;
the layout may also sit one or two folders down (a zip of a whole folder). Files are paired by their
shared identifier, after stripping annotation suffixes used by public data sets (``21_training.tif`` ↔
``21_manual1.gif`` ↔ ``21_training_mask.gif``; ``name.png`` ↔ ``name_mask.png``, ``name_1stHO.png``,
``name.ah.ppm``). Where a layout has no field-of-view masks, :class:`Sample` has ``fov_path=None``.
Every image is read through :mod:`engine.imageio`.
"""
from __future__ import annotations

import gzip
import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from engine.fov import estimate_fov, fov_diameter, rescale, scale_factor
from engine.errors import UserError
from engine.imageio import IMAGE_EXTENSIONS, is_image_name, list_images, read_image, read_mask

CHANNELS = ("green", "gray", "rgb")
NORMALIZATIONS = ("zscore", "unit")  # z-score inside the FOV per image, or plain /255
EXTENSIONS = tuple(sorted(IMAGE_EXTENSIONS))  # alphabetically, for messages
# Training brings a photograph whose field of view is wider than this many pixels down to it (the
# TrainingConfig option ``max_fov_px``): at this width the median vessel of the 3504×2336 HRF photographs
# is about as many pixels across as the median vessel of DRIVE's 565×584 ones (docs/BENCHMARKS.md).
MAX_FOV_PX = 1200
_SUFFIX = re.compile(
    r"[._\-](?:training|train|test|manual\d*|mask|masks|fov|gt|label|labels|seg|vessels?|annotation|"
    r"\d(?:st|nd|rd|th)_?ho|ah|vk)$",
    re.IGNORECASE,
)
_COMPRESSED = ".gz"  # STARE is distributed as name.ppm.gz; engine.imageio decompresses it
LAYOUTS = ("DRIVE", "STARE", "CHASE_DB1", "HRF", "images/ + masks/")  # the names Dataset.layout takes
_LOOKED_FOR = ("DRIVE (images/, 1st_manual/, mask/), STARE (stare-images/ with labels-ah/ or labels-vk/), "
               "CHASE_DB1 (Image_01L.jpg beside Image_01L_1stHO.png in one folder), HRF (images/, manual1/, "
               "mask/) or images/ + masks/ (optionally fov/)")


class DatasetError(UserError):
    """A data set folder cannot be used; the message names the files and says what to change."""


@dataclass(frozen=True)
class Sample:
    id: str
    image_path: Path
    mask_path: Path
    fov_path: Path | None


def identifier(filename: str) -> str:
    """The identifier shared by an image and its annotations.

    Args:
        filename: a file name or path, e.g. ``21_training.tif``, ``im0001.ah.ppm.gz``, ``Image_01L_1stHO.png``.

    Returns:
        The name without its image extension(s) (and ``.gz``) and without annotation suffixes:
        ``21``, ``im0001``, ``Image_01L``.
    """
    key = _without_extensions(Path(filename).name)
    while True:
        shorter = _SUFFIX.sub("", key)
        if shorter == key or not shorter:
            break
        key = shorter
    return key


def _without_extensions(name: str) -> str:
    """``im0001.ah.ppm.gz`` -> ``im0001.ah``: the name without its image extension(s) and ``.gz``."""
    while Path(name).suffix.lower() in EXTENSIONS or Path(name).suffix.lower() == _COMPRESSED:
        name = name[: -len(Path(name).suffix)]
    return name


def _names(paths: list[Path], limit: int = 5) -> str:
    shown = ", ".join(p.name for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _by_id(folder: Path, files: list[Path] | None = None) -> dict[str, Path]:
    """Lower-cased identifier -> file, for the images in ``folder`` (or the given ``files`` of it).

    Raises:
        DatasetError: two files share an identifier.
    """
    found: dict[str, Path] = {}
    for path in list_images(folder) if files is None else files:
        key = identifier(path.name).lower()
        if key in found:
            raise DatasetError(
                f"{found[key].name} and {path.name} in {folder} have the same identifier {identifier(path.name)!r}: "
                "keep one file per image in each folder."
            )
        found[key] = path
    return found


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels; ``.gz`` files too."""
    try:
        if path.suffix.lower() == _COMPRESSED:
            with gzip.open(path) as raw, Image.open(raw) as img:
                return img.size
        with Image.open(path) as img:
            return img.size
    except Exception:
        raise DatasetError(f"{path.name} in {path.parent} is not a readable image: replace or remove it.") from None


class Dataset:
    """Image / vessel-mask / FOV triples found by :func:`load_dataset`, with an in-memory cache.

    ``arrays(i, channel, clahe)`` decodes and preprocesses sample ``i`` once and caches the result.
    """

    def __init__(self, root: Path, layout: str, pairs: list[Sample], annotation: str = "",
                 notes: list[str] | tuple[str, ...] = ()):
        """Args: the folder read, its layout (one of :data:`LAYOUTS`), the samples, which vessel
        annotation they use (e.g. ``labels-ah/ (Adam Hoover), labels-vk/ not used``) and sentences
        about files that were left out."""
        self.root = root
        self.layout = layout
        self.pairs = pairs
        self.annotation = annotation
        self.notes = list(notes)
        self._cache: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._diameters_cache: list[float | None] | None = None
        self._lock = threading.RLock()
        self.label: str | None = None  # the name to record instead of the folder's (a remote worker's copy)

    def __len__(self) -> int:
        return len(self.pairs)

    def summary(self) -> dict[str, Any]:
        """What was found, for the Train page and the command line.

        Returns:
            ``path``, ``layout``, ``annotation`` (the vessel annotation used), ``n_images``, ``with_fov``
            (samples with a field-of-view mask; the others have it estimated), ``sizes`` (``"WxH"``),
            ``ids`` and ``notes`` (sentences about files left out).
        """
        sizes = sorted({_header_size(s.image_path) for s in self.pairs})
        return {
            "path": str(self.root), "layout": self.layout, "annotation": self.annotation, "n_images": len(self.pairs),
            "with_fov": sum(s.fov_path is not None for s in self.pairs),
            "sizes": [f"{w}x{h}" for w, h in sizes], "ids": [s.id for s in self.pairs], "notes": list(self.notes),
        }

    def raw(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image uint8 RGB, vessel mask uint8 {0,1}, FOV uint8 {0,1}) of sample ``i``."""
        s = self.pairs[i]
        image = read_image(s.image_path)
        mask = read_mask(s.mask_path)
        fov = read_mask(s.fov_path) if s.fov_path else estimate_fov(image)
        if not fov.any():
            raise DatasetError(f"The field-of-view mask {s.fov_path.name} in {s.fov_path.parent} is all zero, so "
                               f"{s.image_path.name} would have no pixel to learn from or score: replace it with the "
                               "mask made for this image, or remove the fov/ folder to use whole images.")
        return image, mask, fov

    def _diameters(self) -> list[float | None]:
        with self._lock:
            if self._diameters_cache is None:
                self._diameters_cache = [fov_diameter(self.raw(i)[2]) for i in range(len(self))]
            return self._diameters_cache

    def scales(self, max_fov: float = MAX_FOV_PX) -> dict[str, Any]:
        """The scale of every image and the one training brings them to (see :mod:`engine.fov`).

        Args:
            max_fov: the widest field of view (pixels) training uses; 0 = no limit.

        Returns:
            ``diameters``: each image's FOV diameter in pixels (None where its FOV has no visible edge);
            ``median``: their median; ``target``: the median, brought down to ``max_fov`` when it is wider
            (None when no image's scale is known); ``factors``: the resize factor of each image (1.0 for
            those within ``engine.fov.SCALE_TOLERANCE`` of the target; an image of unknown scale is brought
            down by the factor that brings the median to ``max_fov``).
        """
        diameters = self._diameters()
        known = [d for d in diameters if d]
        median = float(np.median(known)) if known else None
        target = min(median, float(max_fov)) if median and max_fov else median
        cap = target / median if median and target < median else 1.0
        return {"diameters": diameters, "median": median, "target": target,
                "factors": [scale_factor(target, d) if d else cap for d in diameters]}

    def scale_summary(self, max_fov: float = MAX_FOV_PX) -> str:
        """One sentence on the images' scales and the one training uses (decodes every image once)."""
        scales = self.scales(max_fov)
        known = [d for d in scales["diameters"] if d]
        if not known:
            return "No image shows the edge of its field of view, so every image is used at its own size."
        resized = sum(f != 1.0 for f in scales["factors"])
        low, high, target = min(known), max(known), scales["target"]
        if target < scales["median"]:
            return (f"Fields of view {scales['median']:,.0f} px across are brought down to {target:,.0f} px for "
                    "training (where the vessels are about as many pixels wide as in other data sets); the model "
                    "predicts such photographs at that scale and enlarges the map back to the full size.")
        if not resized or len(self) < 2:
            return (f"Field of view {target:,.0f} px across (the model records this scale and brings other "
                    "photographs to it when it predicts).")
        return (f"Fields of view from {low:,.0f} to {high:,.0f} px across: {resized} of {len(self)} images are "
                f"resized to {target:,.0f} px, the median, for training.")

    def scaled(self, i: int, max_fov: float = MAX_FOV_PX) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image uint8 RGB, mask, fov) of sample ``i`` at the data set's one scale (:meth:`scales`)."""
        image, mask, fov = self.raw(i)
        factor = self.scales(max_fov)["factors"][i]
        if factor != 1.0:  # a mixed-size data set, or one wider than max_fov: every image at the target scale
            image = rescale(image, factor)
            mask = (rescale(mask.astype(np.float32), factor, "map") >= 0.5).astype(np.uint8)
            fov = rescale(fov, factor, "mask")
        return image, mask, fov

    def arrays(self, i: int, channel: str = "green", clahe: bool = True,
               max_fov: float = MAX_FOV_PX) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(preprocessed float32 (C,H,W) in [0,1], mask, fov) of sample ``i`` at the data set's one scale
        (:meth:`scales`), decoded once and cached."""
        key = (i, channel, bool(clahe), float(max_fov))
        with self._lock:
            if key not in self._cache:
                image, mask, fov = self.scaled(i, max_fov)
                self._cache[key] = (prepare_channels(image, channel, clahe), mask, fov)
            return self._cache[key]

    @property
    def name(self) -> str:
        """How the registry, the pages and a checkpoint name the set: its folder's name (and its parent's
        where the folder is a half such as ``training``), or its ``label`` when one was given (a remote worker
        trains on a copy named by its content hash, labelled with the dashboard's name)."""
        if self.label:
            return self.label
        if self.root.name.lower() in ("training", "train", "test", "images") and self.root.parent.name:
            return f"{self.root.parent.name}/{self.root.name}"
        return self.root.name


@dataclass(frozen=True)
class _Layout:
    """Where a recognised data set keeps its files."""

    name: str  # one of LAYOUTS
    image_dir: Path
    mask_dir: Path
    fov_dir: Path | None  # None: the layout has no field-of-view masks
    annotation: str  # which vessel annotation is used, as the summary says it
    observer: int | None = None  # CHASE_DB1: images and *_<n>HO annotations share one folder; n used
    skip_unlabelled: bool = False  # STARE: the full set has 400 photographs, only 20 of them labelled


# CHASE_DB1's annotation files: Image_01L_1stHO.png (observer 1), Image_01L_2ndHO.png (observer 2).
_OBSERVER_SUFFIX = re.compile(r"[._\-](\d)(?:st|nd|rd|th)_?ho$", re.IGNORECASE)


def _observer(name: str) -> int | None:
    """The observer number of a ``*_1stHO`` / ``*_2ndHO`` annotation file name, else None."""
    match = _OBSERVER_SUFFIX.search(_without_extensions(name))
    return int(match.group(1)) if match else None


def _observer_files(n: int) -> str:
    """``*_1stHO``, ``*_2ndHO``, …: how the summary names one observer's annotation files."""
    return f"*_{ {1: '1st', 2: '2nd', 3: '3rd'}.get(n, f'{n}th')}HO"


def _child_dirs(folder: Path) -> dict[str, Path]:
    """Lower-cased name -> subfolder of ``folder``, leaving out hidden folders and macOS zip debris."""
    try:
        return {p.name.lower(): p for p in sorted(folder.iterdir())
                if p.is_dir() and not p.name.startswith((".", "__MACOSX"))}
    except OSError:
        return {}


def _recognise(folder: Path) -> _Layout | None:
    """The layout whose folders (or, for CHASE_DB1, files) ``folder`` holds, or None."""
    dirs = _child_dirs(folder)
    images = dirs.get("images")
    if images is not None:
        if "1st_manual" in dirs:
            unused = f", {dirs['2nd_manual'].name}/ not used" if "2nd_manual" in dirs else ""
            return _Layout("DRIVE", images, dirs["1st_manual"], dirs.get("mask"),
                           f"{dirs['1st_manual'].name}/ (first observer){unused}")
        if "manual1" in dirs:
            return _Layout("HRF", images, dirs["manual1"], dirs.get("mask"), f"{dirs['manual1'].name}/")
        if "masks" in dirs:
            return _Layout("images/ + masks/", images, dirs["masks"], dirs.get("fov"), f"{dirs['masks'].name}/")
    stare = dirs.get("stare-images")
    if stare is not None and ("labels-ah" in dirs or "labels-vk" in dirs):
        if "labels-ah" in dirs:
            unused = f", {dirs['labels-vk'].name}/ not used" if "labels-vk" in dirs else ""
            return _Layout("STARE", stare, dirs["labels-ah"], None,
                           f"{dirs['labels-ah'].name}/ (Adam Hoover){unused}", skip_unlabelled=True)
        return _Layout("STARE", stare, dirs["labels-vk"], None, f"{dirs['labels-vk'].name}/ (Valentina Kouznetsova)",
                       skip_unlabelled=True)
    try:
        observers = {_observer(p.name) for p in folder.iterdir() if p.is_file() and is_image_name(p.name)}
    except OSError:
        return None
    observers.discard(None)
    if not observers:
        return None
    used = min(observers)  # the first observer's, as papers report CHASE_DB1
    others = "".join(f", {_observer_files(n)} not used" for n in sorted(observers - {used}))
    return _Layout("CHASE_DB1", folder, folder, None, f"{_observer_files(used)} (observer {used}){others}",
                   observer=used)


def _resolve_root(path: Path) -> Path:
    """The folder that holds a recognised layout: ``path`` itself or the one folder up to two levels below
    it that does, as zips made of a whole folder nest; of DRIVE's ``training/`` and ``test/``, ``training/``.

    Returns ``path`` itself when nothing is recognised (:func:`load_dataset` then says what it looked for).

    Raises:
        DatasetError: ``path`` is not a folder, or several folders at the same depth below it hold a data set.
    """
    if not path.is_dir():
        raise DatasetError(f"The data set folder {path} does not exist: check the path.")
    level = [path]
    for depth in range(3):
        found = [folder for folder in level if _recognise(folder) is not None]
        training = [folder for folder in found if folder.name.lower() == "training"]
        if len(found) == 1 or len(training) == 1:
            return (training or found)[0]  # the DRIVE download's top folder holds training/ and test/
        if found:
            shown = ", ".join(str(f.relative_to(path)) + "/" for f in found[:5])
            raise DatasetError(f"{path} holds several data sets ({shown}{' and more' if len(found) > 5 else ''}): "
                               "choose one of these folders.")
        if depth < 2:
            level = [sub for folder in level for sub in _child_dirs(folder).values()]
    return path


def load_dataset(path: str | Path) -> Dataset:
    """Find the image / vessel-mask / FOV triples of a data set folder and check that they pair.

    Args:
        path: a folder in one of the :data:`LAYOUTS` (see the module docstring), or a folder up to two
            levels above one.

    Returns:
        A :class:`Dataset` whose ``pairs`` are sorted by identifier; ``fov_path`` is None where the layout
        has no field-of-view masks.

    Raises:
        DatasetError: the folder is missing or in no known layout, its files do not pair, a file's header
            cannot be read, or a mask's size differs from its image's.
    """
    root = _resolve_root(Path(path).expanduser())
    layout = _recognise(root)
    if layout is None:
        if "images" in _child_dirs(root):
            raise DatasetError(f"{root} has images/ but no folder of vessel masks beside it: put the vessel masks "
                               f"in masks/ (optionally the field-of-view masks in fov/), or use one of the layouts "
                               f"this program reads: {_LOOKED_FOR}.")
        raise DatasetError(f"{root} holds no data set in a layout this program reads (in it or up to two folders "
                           f"down). It looks for {_LOOKED_FOR}: arrange the files in one of these layouts, or "
                           "choose the folder that holds them.")
    if layout.observer is None:
        images, masks = _by_id(layout.image_dir), _by_id(layout.mask_dir)
    else:
        files = list_images(layout.image_dir)
        images = _by_id(layout.image_dir, [p for p in files if _observer(p.name) is None])
        masks = _by_id(layout.mask_dir, [p for p in files if _observer(p.name) == layout.observer])
    fovs = _by_id(layout.fov_dir) if layout.fov_dir is not None else None
    image_dir, mask_dir = layout.image_dir, layout.mask_dir
    if not images:
        nested = sorted(p.name + "/" for p in image_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        if nested:
            raise DatasetError(f"{image_dir} holds no images directly, only the folder(s) {', '.join(nested[:5])}: "
                               f"put the photographs straight into {image_dir.name}/ (and their masks into "
                               f"{mask_dir.name}/).")
        raise DatasetError(f"{image_dir} holds no images ({', '.join(EXTENSIONS)}): the data set is empty.")
    notes = []
    unlabelled = [k for k in images if k not in masks]
    if layout.skip_unlabelled and unlabelled and len(unlabelled) < len(images):
        images = {k: v for k, v in images.items() if k in masks}
        one = len(unlabelled) == 1
        notes.append(f"{len(unlabelled)} photograph{'' if one else 's'} in {image_dir.name}/ "
                     f"{'has' if one else 'have'} no vessel labels in {mask_dir.name}/ and "
                     f"{'is' if one else 'are'} left out.")
    problems = []
    for what, folder, table in (("vessel mask", mask_dir, masks), ("field-of-view mask", layout.fov_dir, fovs)):
        if table is None:
            continue
        missing = [images[k] for k in images if k not in table]
        orphans = [table[k] for k in table if k not in images]
        if missing:
            problems.append(f"no {what} in {folder.name}/ for {_names(missing)}")
        if orphans:
            problems.append(f"no image in {image_dir.name}/ for {_names(orphans)} in {folder.name}/")
    if problems:
        raise DatasetError("Unpaired files: " + "; ".join(problems) + ". Add or rename the files so that they pair.")
    pairs = [Sample(identifier(images[k].name), images[k], masks[k], fovs[k] if fovs is not None else None)
             for k in sorted(images)]
    mismatched = []
    for s in pairs:
        size = _header_size(s.image_path)
        for other in (s.mask_path, s.fov_path):
            if other is not None and _header_size(other) != size:
                w, h = _header_size(other)
                mismatched.append(f"{other.name} is {w}×{h} but {s.image_path.name} is {size[0]}×{size[1]}")
    if mismatched:
        raise DatasetError("Size mismatch: " + "; ".join(mismatched[:5]) + ". Use the masks made for these images.")
    return Dataset(root, layout.name, pairs, annotation=layout.annotation, notes=notes)


def load_datasets(paths: "str | Path | Dataset | list[str | Path | Dataset] | tuple") -> list[Dataset]:
    """Several data sets for one run, each in its own layout and resolution.

    Args:
        paths: one folder (or :class:`Dataset`) or a list of them.

    Returns:
        The data sets, in the order given.

    Raises:
        DatasetError: the list is empty, a folder is missing, empty or without vessel masks (the sentence of
            :func:`load_dataset`, naming the folder), or the same folder is listed twice.
    """
    items = list(paths) if isinstance(paths, (list, tuple)) else [paths]
    if not items:
        raise DatasetError("No data set was chosen: choose at least one folder of photographs with vessel masks.")
    sets: list[Dataset] = []
    seen: dict[Path, str] = {}
    for item in items:
        ds = item if isinstance(item, Dataset) else load_dataset(item)
        key = ds.root.resolve()
        if key in seen:
            raise DatasetError(f"{item} is listed twice (the same data set as {seen[key]}): list each data set once.")
        seen[key] = str(item)
        sets.append(ds)
    return sets


# --------------------------------------------------------------------------- preprocessing

def prepare_channels(image: np.ndarray, channel: str = "green", clahe: bool = True) -> np.ndarray:
    """Select the channel(s) of an RGB uint8 image and apply CLAHE; float32 (C, H, W) in [0, 1]."""
    if channel == "green":
        planes = [image[:, :, 1]]
    elif channel == "gray":
        planes = [cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)]
    elif channel == "rgb":
        planes = [image[:, :, c] for c in range(3)]
    else:
        raise UserError(f"Unknown channel {channel!r}: choose one of {', '.join(CHANNELS)}.")
    if clahe:
        op = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
        planes = [op.apply(np.ascontiguousarray(p)) for p in planes]
    return np.stack(planes).astype(np.float32) / 255.0


def normalization_stats(x: np.ndarray, fov: np.ndarray, normalization: str = "zscore") -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) to subtract/divide by, shape (C, 1, 1); statistics come from FOV pixels."""
    c = x.shape[0]
    if normalization == "unit":
        return np.zeros((c, 1, 1), np.float32), np.ones((c, 1, 1), np.float32)
    if normalization != "zscore":
        raise UserError(f"Unknown normalization {normalization!r}: choose one of {', '.join(NORMALIZATIONS)}.")
    inside = fov.astype(bool)
    pixels = x[:, inside] if inside.sum() > 16 else x.reshape(c, -1)
    mean = pixels.mean(axis=1).reshape(c, 1, 1)
    std = np.maximum(pixels.std(axis=1), 1e-3).reshape(c, 1, 1)
    return mean.astype(np.float32), std.astype(np.float32)


def preprocess(image: np.ndarray, fov: np.ndarray | None = None, channel: str = "green", clahe: bool = True,
               normalization: str = "zscore") -> np.ndarray:
    """Model input float32 (C, H, W) from an RGB uint8 image, exactly as in training."""
    fov = estimate_fov(image) if fov is None else fov
    x = prepare_channels(image, channel, clahe)
    mean, std = normalization_stats(x, fov, normalization)
    return (x - mean) / std


# --------------------------------------------------------------------------- splitting and sampling

def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split into (train, val) indices; at least one of each when there are two or more images."""
    if n < 1:
        raise DatasetError("The data set is empty.")
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_val = 0 if val_fraction <= 0 or n < 2 else min(n - 1, max(1, round(n * val_fraction)))
    return sorted(order[n_val:]), sorted(order[:n_val])


def check_patch_size(sizes: "Dataset | list[Dataset] | list[tuple[int, int]]", patch_size: int) -> None:
    """Refuse a training patch larger than the smallest image (it would be mostly padding).

    ``sizes``: a :class:`Dataset` or a list of them (their headers are read), or (height, width) pairs.
    """
    if isinstance(sizes, Dataset):
        sizes = [sizes]
    if sizes and all(isinstance(item, Dataset) for item in sizes):
        found = [(_header_size(s.image_path)[::-1], s.image_path.name) for ds in sizes for s in ds.pairs]
    else:
        found = [(tuple(int(v) for v in hw), None) for hw in sizes]
    if not found:
        return
    (h, w), name = min(found, key=lambda item: min(item[0]))
    if patch_size > min(h, w):
        which = f" ({name}, {w}×{h} pixels)" if name else f" ({w}×{h} pixels)"
        fit = max(16, min(h, w) // 16 * 16)
        raise DatasetError(f"patch_size {patch_size} is larger than the smallest image{which}: "
                           f"set patch_size to {fit} or less, or use larger images.")


class PatchSampler:
    """Random training patches with flips, rotations, zoom and brightness/contrast/gamma jitter.

    ``images`` are (C,H,W) float in [0,1] (before normalisation), with masks, FOVs and per-image
    normalisation stats. Patch centres are drawn inside the FOV. With ``augment``, a patch is rotated
    by any angle (``any_angle``; else by a multiple of 90°) and zoomed by a factor drawn log-uniformly
    from [1/``max_zoom``, ``max_zoom``] in one affine warp, the mask warped alike and thresholded at 0.5
    so it stays binary; without zoom or free rotation it is a plain crop.
    """

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray], fovs: list[np.ndarray],
                 stats: list[tuple[np.ndarray, np.ndarray]], patch_size: int, augment: bool = True,
                 max_zoom: float = 1.0, any_angle: bool = False, groups: list[int] | None = None):
        """``groups``: the data set each image comes from; a patch then comes from each data set equally
        often (a set is drawn first, then one of its images). None: every image equally often."""
        check_patch_size([img.shape[-2:] for img in images], patch_size)
        if max_zoom < 1.0:
            raise UserError(f"max_zoom must be at least 1 (1 = no zoom), not {max_zoom}.")
        self.images, self.masks, self.stats = images, masks, stats
        self.patch, self.augment = patch_size, augment
        self.max_zoom, self.any_angle = max_zoom, any_angle
        self.centres = [np.argwhere(f > 0) if f.any() else np.argwhere(np.ones_like(f)) for f in fovs]
        self.variants: list[tuple[np.ndarray, tuple[np.ndarray, np.ndarray]] | None] = [None] * len(images)
        self.variant_share = 0.0
        self.groups = None
        if groups is not None and len(set(groups)) > 1:
            if len(groups) != len(images):
                raise UserError(f"{len(groups)} data set labels for {len(images)} images: give one per image.")
            self.groups = [[i for i, g in enumerate(groups) if g == label] for label in sorted(set(groups))]

    def _draw_image(self, rng: np.random.Generator) -> int:
        if self.groups is None:
            return int(rng.integers(len(self.images)))
        members = self.groups[int(rng.integers(len(self.groups)))]
        return members[int(rng.integers(len(members)))]

    def set_variants(self, variants: list[tuple[np.ndarray, tuple[np.ndarray, np.ndarray]] | None],
                     share: float) -> None:
        """Other versions of the images (e.g. as another camera took them: same shape, same mask and FOV),
        each with its normalisation stats, or None; a patch comes from image ``i``'s variant with
        probability ``share``. Variants never change which pixels are drawn, only their values."""
        if len(variants) != len(self.images):
            raise UserError(f"{len(variants)} variants for {len(self.images)} images: give one (or None) per image.")
        for v, img in zip(variants, self.images):
            if v is not None and v[0].shape != img.shape:
                raise UserError(f"A variant of shape {v[0].shape} cannot stand for an image of shape {img.shape}.")
        self.variants, self.variant_share = list(variants), float(share)

    def _crop(self, a: np.ndarray, y: int, x: int) -> np.ndarray:
        p = self.patch
        h, w = a.shape[-2:]
        pad = [(0, 0)] * (a.ndim - 2) + [(0, max(0, p - h)), (0, max(0, p - w))]
        if pad[-1][1] or pad[-2][1]:
            a = np.pad(a, pad, mode="reflect" if min(h, w) > p // 2 else "edge")
        return a[..., y:y + p, x:x + p]

    def _warp(self, img: np.ndarray, msk: np.ndarray, cy: int, cx: int, angle: float,
              zoom: float) -> tuple[np.ndarray, np.ndarray]:
        """The patch centred on (cy, cx), rotated by ``angle`` degrees and zoomed; reflected at the image's edge."""
        p = self.patch
        m = cv2.getRotationMatrix2D((float(cx), float(cy)), angle, zoom)
        m[:, 2] += (p / 2 - cx, p / 2 - cy)

        def warp(a: np.ndarray) -> np.ndarray:
            return cv2.warpAffine(np.ascontiguousarray(a, np.float32), m, (p, p), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REFLECT_101)
        return np.stack([warp(c) for c in img]), (warp(msk) > 0.5)[None].astype(np.float32)

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        p = self.patch
        geometric = self.augment and (self.max_zoom > 1.0 or self.any_angle)
        xs, ys = [], []
        for _ in range(batch_size):
            i = self._draw_image(rng)
            img, msk = self.images[i], self.masks[i]
            mean, std = self.stats[i]
            if self.variant_share > 0 and self.variants[i] is not None and rng.random() < self.variant_share:
                img, (mean, std) = self.variants[i]
            cy, cx = self.centres[i][rng.integers(len(self.centres[i]))]
            if geometric:
                zoom = math.exp(rng.uniform(math.log(1 / self.max_zoom), math.log(self.max_zoom))) \
                    if self.max_zoom > 1.0 else 1.0
                angle = rng.uniform(0, 360) if self.any_angle else 0.0
                xi, yi = self._warp(img, msk, cy, cx, angle, zoom)
            else:
                h, w = img.shape[-2:]
                y = int(np.clip(cy - p // 2, 0, max(0, h - p)))
                x = int(np.clip(cx - p // 2, 0, max(0, w - p)))
                xi, yi = self._crop(img, y, x).copy(), self._crop(msk, y, x)[None].astype(np.float32)
            if self.augment:
                gamma = math.exp(rng.uniform(-0.25, 0.25))
                contrast, brightness = rng.uniform(0.85, 1.15), rng.uniform(-0.08, 0.08)
                xi = np.clip(xi, 0, 1) ** gamma
                mid = xi.mean()
                xi = (xi - mid) * contrast + mid + brightness
                if not self.any_angle:
                    k = int(rng.integers(4))
                    xi, yi = np.rot90(xi, k, (1, 2)), np.rot90(yi, k, (1, 2))
                if rng.random() < 0.5:
                    xi, yi = xi[:, :, ::-1], yi[:, :, ::-1]
            xs.append((xi - mean) / std)
            ys.append(yi)
        return np.ascontiguousarray(np.stack(xs), np.float32), np.ascontiguousarray(np.stack(ys), np.float32)
