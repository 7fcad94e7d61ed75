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

ROI_MARGIN_MM = 40.0


def region_of_interest(vertices: np.ndarray, anchors: np.ndarray, margin: float = ROI_MARGIN_MM) -> np.ndarray:
    """Mask of vertices within ``margin`` of any anchor (the approximate landmarks): the face,
    without the shoulders, the back of the head or stray fragments far from it."""
    d = cKDTree(anchors).query(vertices, distance_upper_bound=margin)[0]
    return np.isfinite(d)


def _hash_uniform(a: np.ndarray, b: np.ndarray, salt: int) -> np.ndarray:
    """Uniform numbers in [0, 1) that depend only on (a, b, salt): a splitmix64 hash."""
    with np.errstate(over="ignore"):
        x = (a.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + b.astype(np.uint64) * np.uint64(0xD1B54A32D192ED03)
             + np.uint64(salt))
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def sample_surface(vertices: np.ndarray, triangles: np.ndarray, spacing: float,
                   seed: int = 0, max_points: int = 400_000, triangle_ids: Optional[np.ndarray] = None) -> np.ndarray:
    """About one point per ``spacing`` x ``spacing`` mm of surface, spread evenly.

    Each triangle gets floor(area / spacing^2 + u) points with u uniform, placed at
    random barycentric positions; a point cloud without triangles is thinned on a grid.
    The random numbers of a triangle depend only on its index in the mesh
    (``triangle_ids``), so the same scan in another pose, or with a slightly
    different region of interest, gets the same samples on the same triangles.
    """
    if len(triangles) == 0:
        return thin_points(vertices, spacing, seed)
    ids = np.arange(len(triangles)) if triangle_ids is None else np.asarray(triangle_ids)
    a, b, c = (vertices[triangles[:, k]] for k in range(3))
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    density = 1.0 / spacing ** 2
    total = area.sum() * density
    if total > max_points:  # keep memory and time bounded on huge regions
        density *= max_points / total
    counts = np.floor(area * density + _hash_uniform(ids, np.zeros_like(ids), seed)).astype(np.int64)
    tri = np.repeat(np.arange(len(area)), counts)
    nth = np.arange(len(tri)) - np.repeat(np.cumsum(counts) - counts, counts)  # sample number within its triangle
    r1 = _hash_uniform(ids[tri], nth + 1, seed + 1)
    r2 = _hash_uniform(ids[tri], nth + 1, seed + 2)
    s = np.sqrt(r1)
    w = np.stack([1 - s, s * (1 - r2), s * r2], axis=1)
    pts = w[:, :1] * a[tri] + w[:, 1:2] * b[tri] + w[:, 2:] * c[tri]
    # Tiny triangles may all round to zero points: a small fragment would vanish. Their
    # vertices farther than ``spacing`` from every sample are kept, thinned to the same
    # spacing, so a dense scan (millions of tiny triangles) is sampled as evenly as a coarse one.
    lonely = np.zeros(len(vertices), bool)
    lonely[triangles[counts == 0].ravel()] = True
    lonely[triangles[counts > 0].ravel()] = False
    lonely = np.flatnonzero(lonely)
    if len(lonely) and len(pts):
        lonely = lonely[~np.isfinite(cKDTree(pts).query(vertices[lonely], distance_upper_bound=spacing)[0])]
    if len(lonely):
        # Ranked by the first triangle they belong to, and their corner of it, not by their
        # own index: the same samples whatever order the vertices are listed in.
        first = np.full(len(vertices), len(triangles) * 3, dtype=np.int64)
        np.minimum.at(first, triangles.ravel(), np.arange(triangles.size, dtype=np.int64))
        extra = thin_points(vertices[lonely], spacing, seed, ids=ids[first[lonely] // 3] * 3 + first[lonely] % 3)
        return np.vstack([pts, extra])
    return pts


THIN_NEIGHBOURS = 16  # neighbours compared when thinning; more within ``spacing`` is a far denser cloud


def thin_points(points: np.ndarray, spacing: float, seed: int = 0, ids: Optional[np.ndarray] = None) -> np.ndarray:
    """The points that outrank every other point within ``spacing`` of them, each ranked by a
    random number that depends only on its index (``ids``): no two kept points are closer
    than ``spacing``, and each piece of a cloud keeps at least its top-ranked point.

    Unlike a grid, whose cells are fixed in space, the choice does not change when the
    cloud is moved or turned, so the same scan in another pose is sampled alike."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) < 2:
        return points
    ids = np.arange(len(points)) if ids is None else np.asarray(ids)
    rank = _hash_uniform(ids, np.full(len(ids), 7), seed)
    k = min(THIN_NEIGHBOURS + 1, len(points))
    d, idx = cKDTree(points).query(points, k=k, distance_upper_bound=spacing)
    near = np.isfinite(d[:, 1:])
    other = np.where(near, rank[np.minimum(idx[:, 1:], len(points) - 1)], -1.0)
    return points[rank > other.max(axis=1)]


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
