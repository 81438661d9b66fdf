"""Connected-component primitives behind ``engine.postprocess``: labelling, counting, hysteresis by
flood fill, per-component width and vessel ratio, and enclosed-hole search.

They work on uint8 {0, 1} masks and flat pixel indices, never on full-image lookups; the
measurements that chose each approach are in ``benchmarks/postprocess.py``'s docstring. Like
``engine.postprocess``, this module imports neither torch nor streamlit.
"""
from __future__ import annotations

import cv2
import numpy as np

FILL_ROUNDS = 8  # hysteresis: fills picked from the whole seed array before going one by one
FILL_MAX_SEEDS = 1000  # seeds still unreached after those rounds above which labelling is cheaper


def hysteresis_mask(prob: np.ndarray, low: float, high: float, connectivity: int) -> tuple[np.ndarray, int]:
    """uint8 {0, 1}: pixels ``>= low`` connected to a seed (a pixel ``>= high``), and the number
    of connected regions kept.

    Flood fill from the seeds rather than labelling the weak mask: a noisy map has ~10^5 weak
    specks that labelling must number and a lookup must visit, but a fill touches only the kept
    regions. Most seeds lie in the vessel tree, so a seed picked from the middle of the seed array
    usually fills the tree, and the seeds it reached drop out in one vectorised pass. The few left
    are filled one by one, skipping those an earlier fill reached. A map whose seeds lie in many
    separate regions (thousands of dots) would need thousands of fills; there labelling the weak
    mask once is cheaper, and is used.
    """
    h, w = prob.shape
    weak = (prob >= np.float32(low)).view(np.uint8)
    seeds = np.flatnonzero(prob >= np.float32(high))
    filled = np.zeros((h + 2, w + 2), dtype=np.uint8)  # floodFill's mask: a 1-pixel frame around
    flat = filled.ravel()
    at = seeds + (seeds // w) * 2 + (w + 3)  # each seed's index in the framed mask
    flags = connectivity | cv2.FLOODFILL_MASK_ONLY | cv2.FLOODFILL_FIXED_RANGE | (1 << 8)

    def fill_from(i: int) -> None:  # the weak region around framed index i (weak == 1 there)
        y, x = divmod(i, w + 2)
        cv2.floodFill(weak, filled, (x - 1, y - 1), 0, 0, 0, flags)

    regions = 0
    for _ in range(FILL_ROUNDS):
        if at.size <= 256:
            break
        fill_from(int(at[at.size // 2]))
        regions += 1
        at = at[flat[at] == 0]
    if at.size > FILL_MAX_SEEDS:
        return _hysteresis_by_labels(weak, seeds, connectivity)
    for i in at.tolist():
        if flat[i] == 0:
            fill_from(i)
            regions += 1
    return np.ascontiguousarray(filled[1:-1, 1:-1]), regions


def _hysteresis_by_labels(weak: np.ndarray, seeds: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """Label the weak mask once and keep the labels that contain a seed."""
    n, labels = label_components(weak, connectivity)
    idx = np.flatnonzero(weak.view(bool))
    lab = labels.ravel()[idx]
    seeded = np.zeros(n, dtype=bool)
    seeded[labels.ravel()[seeds]] = True
    out = np.zeros(weak.shape, dtype=np.uint8)
    out.ravel()[idx[seeded[lab]]] = 1
    return out, int(np.count_nonzero(seeded))


def width_per_label(mask: np.ndarray, labels_fg: np.ndarray, idx: np.ndarray, n: int) -> np.ndarray:
    """Each component's width at its widest point, in pixels: ``2 * d_max - 1``, where ``d_max`` is the
    largest taxicab (4-neighbour step) distance from one of its pixels to the nearest background pixel.

    Args:
        mask: uint8 {0, 1} (H, W), the components' pixels (pixels outside the image count as background).
        labels_fg: int label of each foreground pixel, in the order of ``idx``.
        idx: flat indices of the foreground pixels of ``mask``.
        n: number of labels including the background label 0.

    Returns:
        float64 (n,): widths; 1 for a 1-pixel-wide line, ``2k + 1`` for a straight bar ``2k + 1`` pixels
        wide, about the diameter for a disc; 0 for labels with no pixel (label 0).

    The taxicab distance is exact in integers and, unlike a Euclidean one, cheap to compute; a pixel's
    distance never depends on other components, because a 4-step path out of a component leaves it
    through background first (components never touch along an edge). Only the foreground's bounding
    box, with a 1-pixel background frame, is transformed.
    """
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0:
        return np.zeros(n)
    framed = cv2.copyMakeBorder(mask[y:y + h, x:x + w], 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    # each pixel's flat index in the framed box: row r, column c -> (r - y + 1) * (w + 2) + (c - x + 1)
    at = idx + (idx // mask.shape[1]) * (w + 2 - mask.shape[1]) + ((1 - y) * (w + 2) + 1 - x)
    widest = None
    for depth in (cv2.CV_8U, cv2.CV_32F):  # uint8 is twice as fast, but stops at 255 (a blob ~500 px wide)
        dist = cv2.distanceTransform(framed, cv2.DIST_L1, 3, dstType=depth)  # exact integers either way
        d = dist.ravel()[at]
        widest = np.zeros(n, dtype=d.dtype)
        np.maximum.at(widest, labels_fg, d)
        if depth != cv2.CV_8U or widest.max() < 255:
            break
    widest = widest.astype(np.float64)
    return np.where(widest > 0, 2.0 * widest - 1.0, 0.0)


def vessel_ratio_per_label(mask: np.ndarray, labels_fg: np.ndarray, idx: np.ndarray, n: int) -> np.ndarray:
    """How tube-like each component is: ``area / width**2``, with ``width`` from ``width_per_label``.

    ``area / width`` is the length of a tube of that width with the component's area, so the ratio is
    length over width: a straight bar scores its length over its width (a 1-pixel line of n pixels
    scores n), bent and branching vessels score their total length over their widest width, a disc
    about 0.8, an ellipse about 0.8 times its aspect ratio, a square or a dot about 1. Arguments as in
    ``width_per_label``; returns float64 (n,), 0 for label 0.
    """
    width = width_per_label(mask, labels_fg, idx, n)
    area = np.bincount(labels_fg, minlength=n).astype(np.float64)
    return np.divide(area, width * width, out=np.zeros(n), where=width > 0)


def label_components(image: np.ndarray, connectivity: int, out: np.ndarray | None = None) -> tuple[int, np.ndarray]:
    """``cv2.connectedComponents`` with the faster algorithm for each connectivity: SAUF for 4
    (the default, Spaghetti4C, is slower on vessel masks and hole images), the default for 8.

    Args:
        image: uint8 (H, W), nonzero is foreground.
        connectivity: 4 or 8.
        out: an int32 (H, W) array to write the labels into, or None.

    Returns:
        (number of labels including the background's 0, int32 (H, W) labels).
    """
    algorithm = cv2.CCL_SAUF if connectivity == 4 else cv2.CCL_DEFAULT
    n, labels = cv2.connectedComponentsWithAlgorithm(image, connectivity, cv2.CV_32S, algorithm, labels=out)
    return n, labels


def count_components(mask: np.ndarray, connectivity: int, scratch: np.ndarray | None = None) -> int:
    """Number of components of a {0, 1} mask. Only its bounding box is labelled, into the memory of
    ``scratch`` (a C-contiguous int32 array at least that large, whose contents are lost) when given:
    a fresh 16 MB label image costs ~4,000 page faults at 2048x2048."""
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0:
        return 0
    out = None
    if scratch is not None and scratch.dtype == np.int32 and scratch.flags.c_contiguous and scratch.size >= w * h:
        out = scratch.reshape(-1)[: w * h].reshape(h, w)
    return int(label_components(mask[y:y + h, x:x + w], connectivity, out)[0] - 1)


def small_hole_pixels(mask: np.ndarray, below: int, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of the holes to fill: ``(flat indices, hole id per index)``, ids from 1.

    A hole is a background region that vessel pixels enclose completely, i.e. one that does not
    touch the image border; it is filled when it has fewer than ``below`` pixels. Background
    that reaches the border (the outside, or a notch between a vessel and the image edge) is
    never filled, whatever its size. Background connectivity is the complement of the
    foreground's (8 -> 4, 4 -> 8), so a hole does not leak out through a diagonal gap between
    vessel pixels that are connected to each other.

    Holes lie inside the foreground's bounding box, and background outside it reaches the
    border, so the work is done on that box with a 1-pixel background frame around it: one flood
    fill from the frame marks the outside; the background left over is the holes (a small part
    of the image), and only that image is labelled. No full-image lookup is needed.
    """
    empty = np.zeros(0, dtype=np.intp)
    x, y, w, h = cv2.boundingRect(mask)
    if below <= 1 or w == 0:
        return empty, empty
    background_connectivity = 12 - connectivity
    padded = cv2.copyMakeBorder(mask[y:y + h, x:x + w], 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    cv2.floodFill(padded, None, (0, 0), 1, flags=background_connectivity)  # the outside becomes 1
    holes = cv2.bitwise_xor(padded[1:-1, 1:-1], 1)
    if not cv2.countNonZero(holes):
        return empty, empty
    n, labels = label_components(holes, background_connectivity)
    idx = np.flatnonzero(holes.view(bool))
    lab = labels.ravel()[idx]
    small = np.bincount(lab, minlength=n) < below
    small[0] = False
    sel = small[lab]
    rows, cols = np.divmod(idx[sel], w)
    return (rows + y) * mask.shape[1] + (cols + x), lab[sel]


def merges_through_holes(labels: np.ndarray, keep: np.ndarray, idx: np.ndarray, hole_ids: np.ndarray,
                         connectivity: int) -> int:
    """How many components filling the holes joins together (a hole around an island touches both).

    ``labels``/``keep``: the component labelling and which labels survived; ``idx``/``hole_ids``:
    from ``small_hole_pixels``. Each filled hole connects the kept components next to it (in the
    foreground's connectivity); the answer is the number of successful unions over those links.
    Hole pixels never lie on the image border, so the neighbour offsets stay inside the image.
    """
    width = labels.shape[1]
    offsets = np.array([-width, -1, 1, width] if connectivity == 4 else
                       [-width - 1, -width, -width + 1, -1, 1, width - 1, width, width + 1])
    neighbours = labels.ravel()[idx[:, None] + offsets]
    touching = keep[neighbours]
    pairs = np.unique(np.stack([np.repeat(hole_ids, offsets.size)[touching.ravel()], neighbours[touching]]), axis=1)
    parent: dict[int, int] = {}  # union-find over component labels; pairs are sorted by hole

    def root(x: int) -> int:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    merges = 0
    for (hole, label), (previous_hole, previous_label) in zip(pairs.T[1:].tolist(), pairs.T[:-1].tolist()):
        a, b = root(label), root(previous_label)
        if hole == previous_hole and a != b:  # the same hole touches both: one component now
            parent[a] = b
            merges += 1
    return merges
