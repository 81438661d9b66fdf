"""Data sets of fundus images with vessel masks: the :class:`Dataset` (decoding, scales, cache), loading
one or several, and the patch-size check.

Where a data set's files are found and how they pair is :mod:`engine.training.layouts` (the layouts of
DRIVE, STARE, CHASE_DB1, HRF and images/ + masks/); preprocessing is :mod:`engine.training.preprocess`;
the split and the training patches are :mod:`engine.training.sampling`. This module re-exports the
names other packages import from it (``__all__``). Every image is read through :mod:`engine.imageio`.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from engine.fov import estimate_fov, fov_diameter, rescale, scale_factor
from engine.imageio import read_image, read_mask
from engine.training.layouts import DatasetError, Sample, header_size, pair_files
from engine.training.preprocess import CHANNELS, NORMALIZATIONS, prepare_channels, preprocess

__all__ = [
    "MAX_FOV_PX", "Dataset", "load_dataset", "load_datasets", "check_patch_size",
    # defined in engine.training.layouts and engine.training.preprocess; re-exported for the packages that
    # import them from here (jobs, the configs, inference)
    "DatasetError", "CHANNELS", "NORMALIZATIONS", "preprocess",
]

# Training brings a photograph whose field of view is wider than this many pixels down to it (the
# TrainingConfig option ``max_fov_px``): at this width the median vessel of the 3504×2336 HRF photographs
# is about as many pixels across as the median vessel of DRIVE's 565×584 ones (docs/BENCHMARKS.md).
MAX_FOV_PX = 1200


class Dataset:
    """Image / vessel-mask / FOV triples found by :func:`load_dataset`, with an in-memory cache.

    ``arrays(i, channel, clahe)`` decodes and preprocesses sample ``i`` once and caches the result.
    """

    def __init__(self, root: Path, layout: str, pairs: list[Sample], annotation: str = "",
                 notes: list[str] | tuple[str, ...] = ()):
        """Args: the folder read, its layout (one of :data:`engine.training.layouts.LAYOUTS`), the samples, which vessel
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
        sizes = sorted({header_size(s.image_path) for s in self.pairs})
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


def load_dataset(path: str | Path) -> Dataset:
    """Find the image / vessel-mask / FOV triples of a data set folder and check that they pair.

    Args:
        path: a folder in one of the layouts of :mod:`engine.training.layouts`, or a folder up to two
            levels above one.

    Returns:
        A :class:`Dataset` whose ``pairs`` are sorted by identifier; ``fov_path`` is None where the layout
        has no field-of-view masks.

    Raises:
        DatasetError: the folder is missing or in no known layout, its files do not pair, a file's header
            cannot be read, or a mask's size differs from its image's.
    """
    found = pair_files(path)
    return Dataset(found.root, found.layout, found.samples, annotation=found.annotation, notes=found.notes)


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


def check_patch_size(sizes: "Dataset | list[Dataset] | list[tuple[int, int]]", patch_size: int) -> None:
    """Refuse a training patch larger than the smallest image (it would be mostly padding).

    ``sizes``: a :class:`Dataset` or a list of them (their headers are read), or (height, width) pairs.
    """
    if isinstance(sizes, Dataset):
        sizes = [sizes]
    if sizes and all(isinstance(item, Dataset) for item in sizes):
        found = [(header_size(s.image_path)[::-1], s.image_path.name) for ds in sizes for s in ds.pairs]
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

