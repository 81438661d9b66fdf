"""Time enhanced_post_processing against a plain scikit-image/SciPy version of the same steps.

Run: ``.venv/bin/python benchmarks/postprocess.py [--repeats N]``. Prints one table row per
(map size, step configuration): our median, the reference median, their ratio, and whether the
two output masks are identical (else the number of differing pixels).

Maps are vessel-like probability maps: the DRIVE manual annotation of image 21 (from
../shared/data/drive, when present) blurred, with Gaussian noise, at its own size 565x584 and
resized to 2048x2048; without DRIVE, a drawn vessel tree is used instead. OpenCV runs on one
thread (``cv2.setNumThreads(1)``) so that the comparison with single-threaded SciPy is fair.

The reference is written the way one would write it with scikit-image: ``threshold_otsu``,
``apply_hysteresis_threshold``-style labelling with ``ndi.label``, ``binary_opening`` /
``binary_closing`` with the very same footprint array, ``ndi.label`` + ``regionprops``
(area, and the mean probability over each region's pixels that passed thresholding and
opening) in a loop, with the shape filter's widest width taken as each region's
maximum of ``ndi.distance_transform_cdt(..., metric="taxicab")``, and hole filling with
``ndi.binary_fill_holes`` (background connectivity complementary to the foreground's), then
``ndi.label`` of the filled-in holes and a size filter: only enclosed holes smaller than
``fill_holes_below`` are filled, never background touching the image border.

Why ``enhanced_post_processing`` is built as it is (it runs on every slider move). Measured at
2048x2048 on a vessel-like map (DRIVE mask resized, blurred, plus noise; ~6 % foreground, ~270
components), one core, a shared machine (so ranges):

=========================================  ========
threshold (``p >= t``)                       ~1 ms
opening / closing 3x3 (cv2.morphologyEx)     ~1 ms each
cv2.connectedComponents (labels only)        6-10 ms
cv2.connectedComponentsWithStats             26-35 ms  (stats cost 3-4x the labelling)
np.bincount over all 4M labels               ~22 ms
np.flatnonzero(bool mask)                    ~1.5 ms   (on a uint8 array: ~9 ms)
gather + bincount over the ~0.2M fg pixels   ~1 ms
lut[labels] over the whole image             ~14 ms
4-connected labelling: CCL_SAUF             ~1.5x faster than the default (Spaghetti4C)
hole search: flood fill of the outside       8-10 ms   (on the foreground's bounding box)
             + labelling the holes image     7-9 ms
Otsu levels: cv2.convertScaleAbs / np.rint   2 / 22 ms
hysteresis, labelling the weak mask          30-45 ms  (~150,000 weak noise specks)
hysteresis, flood fill from the seeds        15-22 ms
shape filter: taxicab distance transform     ~5 ms     (uint8 out; float32 ~10, exact Euclidean ~80)
shape filter: gather + np.maximum.at         ~2 ms     (~0.3M foreground pixels, uint8)
skimage.morphology.skeletonize (for scale)   ~95 ms    (why the width is not taken from a skeleton)
=========================================  ========

So the component filters label once with ``cv2.connectedComponents`` (no stats), take the
foreground pixel indices once, and do every per-component reduction over foreground pixels only
(area and mean probability with ``np.bincount``, the shape filter's widest width with
``np.maximum.at``); pixels are then removed by writing zeros at the indices of dropped labels, never by a full-image lookup. Hole
filling works on the foreground's bounding box: one flood fill from a 1-pixel frame marks the
outside, the background left over is the holes (sparse), and only the holes image is labelled;
the pixels of small holes are set through their indices. Hysteresis flood-fills the weak mask from
the seeds (see ``engine.postprocess.connectivity.hysteresis_mask``) instead of labelling it.
``components_after`` is derived rather than relabelled: it is the number of kept components,
minus the joins made by filled holes (a hole between a ring and an island inside it touches both;
found from the labels around the few filled-hole pixels). Only when the FOV removed pixels (its
edge can split or delete components) is the final mask labelled again, on its bounding box and in
the filter's label memory (~6 ms at 2048x2048).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.measure import regionprops
from skimage.morphology import binary_closing, binary_opening

# binary_opening/closing are deprecated in scikit-image 0.26 (removal in 0.28); their
# replacements opening/closing are grey-level operators with other border rules.
warnings.filterwarnings("ignore", message=".*binary_(opening|closing).*deprecated", category=FutureWarning)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.postprocess import KERNEL_SHAPES, PostProcessConfig, enhanced_post_processing  # noqa: E402

DRIVE = ROOT.parent / "shared" / "data" / "drive" / "training"

CONFIGS = {
    "defaults: fixed 0.6, open+close 3, size 50, conf 0.6": PostProcessConfig(),
    "hysteresis 0.6/0.3, shape filter, fov": PostProcessConfig(threshold_mode="hysteresis", shape_filter=True),
    "otsu, shape, holes<30, fov": PostProcessConfig(threshold_mode="otsu", shape_filter=True, fill_holes_below=30),
    "fixed 0.5, cross 5, conn 4, shape, holes<50": PostProcessConfig(
        threshold=0.5, kernel_shape="cross", opening_kernel=5, closing_kernel=5, connectivity=4,
        shape_filter=True, fill_holes_below=50, confidence_threshold=0.55),
}
USES_FOV = {name: "fov" in name for name in CONFIGS}


# --- the reference: scikit-image / SciPy, same semantics ------------------------------------

def _structure(connectivity: int) -> np.ndarray:
    return ndi.generate_binary_structure(2, 1 if connectivity == 4 else 2)


def reference_post_processing(prob: np.ndarray, cfg: PostProcessConfig, fov: np.ndarray | None) -> np.ndarray:
    prob = prob.astype(np.float32)
    structure = _structure(cfg.connectivity)
    if cfg.threshold_mode == "fixed":
        mask = prob >= np.float32(cfg.threshold)
    elif cfg.threshold_mode == "otsu":
        levels = np.rint(prob * np.float32(255.0)).astype(np.uint8)
        level = threshold_otsu(levels[fov > 0] if fov is not None else levels)
        mask = levels > level
    else:  # skimage.filters.apply_hysteresis_threshold, with >= and the configured connectivity
        low = prob >= np.float32(cfg.hysteresis_low)
        high = prob >= np.float32(cfg.threshold)
        labels, n = ndi.label(low, structure=structure)
        connected = ndi.sum(high, labels, np.arange(n + 1)) > 0
        connected[0] = False
        mask = connected[labels]
    footprint = cv2.getStructuringElement(KERNEL_SHAPES[cfg.kernel_shape], (cfg.opening_kernel,) * 2).astype(bool)
    if cfg.apply_opening and cfg.opening_kernel > 1:
        mask = binary_opening(mask, footprint)
    footprint = cv2.getStructuringElement(KERNEL_SHAPES[cfg.kernel_shape], (cfg.closing_kernel,) * 2).astype(bool)
    evidence = mask  # the confidence filter averages over the pixels that passed thresholding and opening
    if cfg.apply_closing and cfg.closing_kernel > 1:
        mask = binary_closing(mask, footprint)
    labels, _ = ndi.label(mask, structure=structure)
    if cfg.shape_filter:  # distance to the background, pixels outside the image counting as background
        taxicab = ndi.distance_transform_cdt(np.pad(mask, 1), metric="taxicab")[1:-1, 1:-1]
    kept = []
    for region in regionprops(labels, intensity_image=prob):
        if region.area < cfg.min_component_size:
            continue
        if cfg.confidence_threshold > 0:
            inside = evidence[tuple(region.coords.T)]
            confidence = prob[tuple(region.coords[inside].T)].mean() if inside.any() else 0.0
            if confidence < cfg.confidence_threshold:
                continue
        if cfg.shape_filter:
            width = 2.0 * taxicab[tuple(region.coords.T)].max() - 1.0
            if region.area / width ** 2 < cfg.min_elongation:
                continue
        kept.append(region.label)
    mask = np.isin(labels, kept)
    if cfg.fill_holes_below > 0:
        background = _structure(12 - cfg.connectivity)
        holes = ndi.binary_fill_holes(mask, structure=background) & ~mask
        hole_labels, n = ndi.label(holes, structure=background)
        small = np.bincount(hole_labels.ravel(), minlength=n + 1) < cfg.fill_holes_below
        small[0] = False
        mask = mask | small[hole_labels]
    if fov is not None:
        mask &= fov > 0
    return mask.astype(np.uint8)


# --- inputs ---------------------------------------------------------------------------------

def drawn_vessels(size: int = 584, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(vessel mask, fov) of a random branching tree inside a disc."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), np.uint8)
    tips = [((size // 2, size // 2), rng.uniform(0, 2 * np.pi), 7)]
    while tips:
        (x, y), angle, width = tips.pop()
        length = rng.uniform(0.05, 0.15) * size
        end = (int(x + length * np.cos(angle)), int(y + length * np.sin(angle)))
        cv2.line(mask, (int(x), int(y)), end, 1, max(1, width))
        if width > 1 and len(tips) < 400:
            tips += [(end, angle + rng.uniform(-0.6, 0.6), width - 1) for _ in range(2)]
    fov = np.zeros_like(mask)
    cv2.circle(fov, (size // 2, size // 2), int(size * 0.46), 1, -1)
    return mask & fov, fov


def vessel_like_maps(seed: int = 0) -> tuple[str, list[tuple[str, np.ndarray, np.ndarray]]]:
    if (DRIVE / "1st_manual" / "21_manual1.gif").is_file():
        from engine.imageio import read_mask

        vessels = read_mask(DRIVE / "1st_manual" / "21_manual1.gif")
        fov = read_mask(DRIVE / "mask" / "21_training_mask.gif")
        source = "DRIVE 21 manual annotation, blurred + noise"
    else:
        vessels, fov = drawn_vessels()
        source = "drawn vessel tree (DRIVE absent), blurred + noise"
    rng = np.random.default_rng(seed)
    maps = []
    for label, (w, h) in (("565x584", vessels.shape[::-1]), ("2048x2048", (2048, 2048))):
        v = cv2.resize(vessels.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        f = cv2.resize(fov, (w, h), interpolation=cv2.INTER_NEAREST)
        prob = cv2.GaussianBlur(v, (0, 0), 1.0 * w / 565) * 0.85 + 0.1
        prob = prob + rng.normal(0.0, 0.12, prob.shape).astype(np.float32)
        maps.append((label, np.clip(prob, 0, 1).astype(np.float32), f))
    return source, maps


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per cell (median reported)")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    source, maps = vessel_like_maps()
    print(f"maps: {source}; OpenCV {cv2.__version__} on 1 thread; median of {args.repeats} runs\n")
    header = ("size", "step config", "ours median ms", "reference median ms", "ratio", "masks identical")
    rows = []
    for label, prob, fov in maps:
        for name, cfg in CONFIGS.items():
            use_fov = fov if USES_FOV[name] else None
            ours = enhanced_post_processing(prob, config=cfg, fov=use_fov).mask
            ref = reference_post_processing(prob, cfg, use_fov)
            differing = int(np.count_nonzero(ours != ref))
            t_ours = median_ms(lambda: enhanced_post_processing(prob, config=cfg, fov=use_fov), args.repeats * 3)
            t_ref = median_ms(lambda: reference_post_processing(prob, cfg, use_fov), args.repeats)
            rows.append((label, name, f"{t_ours:.1f}", f"{t_ref:.1f}", f"{t_ref / t_ours:.1f}x",
                         "yes" if differing == 0 else f"no ({differing} px differ)"))
            print(" | ".join(rows[-1]), flush=True)
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    print()
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")


if __name__ == "__main__":
    main()
