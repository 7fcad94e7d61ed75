"""Is there an ear where the face puts one?

An auricle is a folded shell: within a few centimetres of its centre the surface faces every way
(helix, concha, lobule, the skin behind it). Some scans have no ear one can make out where the
face puts it: a stereo-photogrammetry head whose sides are smoothed into a wall, hair over the
ears, a face-only capture whose cut runs just behind the cheek. The network always answers on
some surface, so there it would place the ear's points on that wall as confidently as anywhere.

:func:`surface_folding` measures how far the surface near a point is from facing one way: 1 less
the length of the area-weighted mean of its triangles' unit normals (0 for a plane, about 0.4-0.7
for an ear). It does not depend on the scan's pose, units or size. Measured within
``AURICLE_RADIUS_MM`` of the centre of one side's answered ear points: the scanned ears of 470
synthetic scans (plain, warped, coarse, with hair; 808 sides judged) fold 0.27 or more (the
coarse meshes lowest); real scanned ears 0.22-0.71 (a partly captured one 0.22); the smooth
sides of a stereo-photogrammetry head 0.03 and 0.11; the cheeks of face-only captures whose ear
points were not found past the cut 0.07-0.19. Below ``AURICLE_MIN_FOLDING`` that side's ear points are missing. Prediction judges
only ear points outside the face template (which has no ears), so a model whose labels ``t_R``
etc. name points on the face is left alone.
"""
from typing import List, Optional, Sequence, Tuple

import numpy as np

EAR_NAMES = ("t", "sa", "sba", "pa", "obs")  # one ear's points (with _R or _L)
AURICLE_RADIUS_MM = 18.0
AURICLE_MIN_FOLDING = 0.15
AURICLE_MIN_POINTS = 3  # answered ear points (missing ones too) needed to judge a side
AURICLE_MIN_TRIANGLES = 12  # fewer triangles near the ear: too little surface to judge


def surface_folding(vertices: np.ndarray, triangles: np.ndarray, near: np.ndarray) -> float:
    """1 - |area-weighted mean unit normal| of the triangles with a vertex in ``near`` (a vertex
    mask or index array); NaN with fewer than AURICLE_MIN_TRIANGLES such triangles."""
    near = np.asarray(near)
    mask = np.zeros(len(vertices), dtype=bool)
    mask[near if near.dtype == bool else near.astype(np.int64)] = True
    tri = np.asarray(triangles)[mask[np.asarray(triangles)].any(axis=1)]
    if len(tri) < AURICLE_MIN_TRIANGLES:
        return float("nan")
    p = np.asarray(vertices, dtype=np.float64)[tri]
    n = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])  # twice the area times the unit normal
    total = np.linalg.norm(n, axis=1).sum()
    if not total > 0.0:
        return float("nan")
    return float(1.0 - np.linalg.norm(n.sum(axis=0)) / total)


def ears_not_made_out(labels: Sequence[str], points: np.ndarray, skip: np.ndarray, vertices: np.ndarray,
                      triangles: np.ndarray, tree, radius: float,
                      missing: Optional[np.ndarray] = None) -> Tuple[np.ndarray, List[str]]:
    """Mask of the ear points (of ``labels``; ``points`` in the scan's frame, like ``vertices``,
    whose search tree is ``tree``) on a side whose surface within ``radius`` (the scan's units for
    AURICLE_RADIUS_MM) of their centre folds less than AURICLE_MIN_FOLDING, and those sides ("R",
    "L"). Points marked in ``skip`` are neither judged nor counted; those ``missing`` already (a cut,
    a hole) still place the ear, and the side's others are flagged."""
    index = {lab: i for i, lab in enumerate(labels)}
    missing = np.zeros(len(labels), dtype=bool) if missing is None else np.asarray(missing, dtype=bool)
    flat = np.zeros(len(labels), dtype=bool)
    sides = []
    for side in ("R", "L"):
        ear = [index[n + "_" + side] for n in EAR_NAMES if n + "_" + side in index]
        placed = [i for i in ear if not skip[i] and np.isfinite(points[i]).all()]
        left = [i for i in placed if not missing[i]]
        if len(placed) < AURICLE_MIN_POINTS or not left:
            continue
        near = tree.query_ball_point(np.mean(points[placed], axis=0), radius)
        if surface_folding(vertices, triangles, np.asarray(near, dtype=np.int64)) < AURICLE_MIN_FOLDING:
            flat[left] = True
            sides.append(side)
    return flat, sides


def describe_flat_ears(labels: Sequence[str], flat: np.ndarray, sides: Sequence[str]) -> str:
    """One sentence for the scan's message, or ""."""
    if not sides:
        return ""
    where = "either side" if len(sides) == 2 else "the {} side".format({"R": "right", "L": "left"}[sides[0]])
    return "no ear made out on {} (the surface there is smooth): {} missing".format(
        where, ", ".join(lab for lab, f in zip(labels, flat) if f))
