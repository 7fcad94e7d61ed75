"""Region of interest, even surface sampling, and the per-landmark patches the network reads.

PAL-Net takes the P scan vertices nearest to each approximate landmark. Scans
here range from 10k to 2M vertices, so the same P vertices would cover a
thumbnail on one scan and half a cheek on another; the surface is therefore
first sampled evenly (one point per ``spacing`` mm, about), and patches are
taken from those samples. Points in a patch are ordered by their distance to
the patch centre, which fixes the order the network's pooling and attention see.
"""
from typing import Optional, Tuple

import numpy as np
from scipy.spatial import cKDTree

from .datatypes import Mesh
from .geometry import sample_surface

ROI_MARGIN_MM = 40.0


def region_of_interest(vertices: np.ndarray, anchors: np.ndarray, margin: float = ROI_MARGIN_MM) -> np.ndarray:
    """Mask of vertices within ``margin`` of any anchor (the approximate landmarks): the face,
    without the shoulders, the back of the head or stray fragments far from it."""
    d = cKDTree(anchors).query(vertices, distance_upper_bound=margin)[0]
    return np.isfinite(d)


def roi_samples(mesh_canonical: Mesh, anchors: np.ndarray, spacing: float, seed: int = 0) -> np.ndarray:
    """Even samples of the part of an (aligned) scan near the approximate landmarks."""
    keep = region_of_interest(mesh_canonical.vertices, anchors)
    if mesh_canonical.n_triangles:
        ids = np.flatnonzero(keep[mesh_canonical.triangles].all(axis=1))
        return sample_surface(mesh_canonical.vertices, mesh_canonical.triangles[ids], spacing, seed, triangle_ids=ids)
    return sample_surface(mesh_canonical.vertices[keep], np.zeros((0, 3), np.int64), spacing, seed)


def extract_patches(tree: cKDTree, centres: np.ndarray, size: int, scale: float
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """(..., P, 3) patches of the ``size`` samples nearest each centre (..., 3), relative to
    it and divided by ``scale``; also returns the centres moved onto their nearest sample."""
    lead = centres.shape[:-1]
    flat = centres.reshape(-1, 3)
    k = min(size, tree.n)
    _, idx = tree.query(flat, k=k)
    idx = np.asarray(idx).reshape(len(flat), k)
    pts = tree.data[idx]
    if k < size:  # a scan with fewer samples than a patch: repeat the farthest point
        pts = np.concatenate([pts, np.repeat(pts[:, -1:], size - k, axis=1)], axis=1)
    snapped = pts[:, 0]
    rel = ((pts - flat[:, None]) / scale).astype(np.float32)
    return rel.reshape(lead + (size, 3)), snapped.reshape(lead + (3,))


def initial_approximation(tree: cKDTree, mean_landmarks: np.ndarray, jitter: Optional[np.ndarray] = None) -> np.ndarray:
    """The mean landmarks (optionally jittered for training), each moved to its nearest sample."""
    centres = mean_landmarks if jitter is None else mean_landmarks + jitter
    return tree.data[tree.query(centres)[1]]
