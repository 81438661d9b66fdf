"""Where a data set keeps its files: the layouts of public data sets, identifiers, and pairing.

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
Only image headers are read here (with PIL, as :mod:`engine.imageio` configures it);
:func:`engine.training.data.load_dataset` turns the paired files into a ``Dataset``.
"""
from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from engine.errors import UserError
from engine.imageio import DECODE_ERRORS, IMAGE_EXTENSIONS, is_image_name, list_images

EXTENSIONS = tuple(sorted(IMAGE_EXTENSIONS))  # alphabetically, for messages
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


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels; ``.gz`` files too."""
    try:
        if path.suffix.lower() == _COMPRESSED:
            with gzip.open(path) as raw, Image.open(raw) as img:
                return img.size
        with Image.open(path) as img:
            return img.size
    except DECODE_ERRORS:  # a missing file is an OSError too
        raise DatasetError(f"{path.name} in {path.parent} is not a readable image: replace or remove it.") from None


@dataclass(frozen=True)
class PairedFiles:
    """The files of a data set folder as :func:`pair_files` found them."""

    root: Path  # the folder that holds the layout
    layout: str  # one of LAYOUTS
    annotation: str  # which vessel annotation is used, as the summary says it
    samples: list[Sample]  # sorted by identifier
    notes: list[str]  # sentences about files that were left out


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

    Returns ``path`` itself when nothing is recognised (:func:`pair_files` then says what it looked for).

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


def pair_files(path: str | Path) -> PairedFiles:
    """Find the image / vessel-mask / FOV triples of a data set folder and check that they pair.

    Args:
        path: a folder in one of the :data:`LAYOUTS` (see the module docstring), or a folder up to two
            levels above one.

    Returns:
        The folder that holds the layout, its layout and annotation, the samples sorted by identifier
        (``fov_path`` is None where the layout has no field-of-view masks) and notes on files left out.

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
        size = header_size(s.image_path)
        for other in (s.mask_path, s.fov_path):
            if other is not None and header_size(other) != size:
                w, h = header_size(other)
                mismatched.append(f"{other.name} is {w}×{h} but {s.image_path.name} is {size[0]}×{size[1]}")
    if mismatched:
        raise DatasetError("Size mismatch: " + "; ".join(mismatched[:5]) + ". Use the masks made for these images.")
    return PairedFiles(root, layout.name, layout.annotation, pairs, notes)
