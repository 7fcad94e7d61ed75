"""Putting points onto a scan's surface: nearest vertex, mean of k nearest, or closest surface point."""
from typing import Optional, Tuple

import numpy as np
from scipy.spatial import cKDTree

from .errors import PalnetError
from .datatypes import Mesh

from .options import DEFAULT_SNAP, SNAP_METHODS  # noqa: E402  (SNAP_METHODS re-exported)


def closest_point_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Closest point to each p[i] on triangle (a[i], b[i], c[i]); all arrays (..., 3).

    Vectorised form of the Voronoi-region test (Ericson, Real-Time Collision
    Detection, 5.1.5): each case is computed for every row and selected with masks.
    """
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = np.einsum("...i,...i", ab, ap), np.einsum("...i,...i", ac, ap)
    bp, cp = p - b, p - c
    d3, d4 = np.einsum("...i,...i", ab, bp), np.einsum("...i,...i", ac, bp)
    d5, d6 = np.einsum("...i,...i", ab, cp), np.einsum("...i,...i", ac, cp)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2

    with np.errstate(divide="ignore", invalid="ignore"):
        denom = va + vb + vc
        v = np.where(denom != 0, vb / denom, 0.0)
        w = np.where(denom != 0, vc / denom, 0.0)
        out = a + ab * v[..., None] + ac * w[..., None]  # interior
        # edges (checked from the last-applied so that vertex regions win)
        t_bc = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        m = (va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0)
        out = np.where(m[..., None], b + (c - b) * np.nan_to_num(t_bc)[..., None], out)
        t_ac = d2 / (d2 - d6)
        m = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
        out = np.where(m[..., None], a + ac * np.nan_to_num(t_ac)[..., None], out)
        t_ab = d1 / (d1 - d3)
        m = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
        out = np.where(m[..., None], a + ab * np.nan_to_num(t_ab)[..., None], out)
    out = np.where(((d6 >= 0) & (d5 <= d6))[..., None], c, out)
    out = np.where(((d3 >= 0) & (d4 <= d3))[..., None], b, out)
    out = np.where(((d1 <= 0) & (d2 <= 0))[..., None], a, out)
    return out


def closest_points_on_surface(mesh: Mesh, points: np.ndarray, candidates: int = 48, tree: Optional[cKDTree] = None
                              ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closest surface point of ``mesh`` to each point: (points, triangle index, distance).

    Candidate triangles are those incident to the nearest vertices; for the
    meshes palnet handles (triangles much smaller than a face) the true closest
    triangle is always among them. ``tree``: a search tree of ``mesh.vertices``, if one
    is at hand.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    tree = tree if tree is not None else cKDTree(mesh.vertices)
    if mesh.n_triangles == 0:
        idx = tree.query(pts)[1]
        q = mesh.vertices[idx]
        return q, np.full(len(pts), -1), np.linalg.norm(q - pts, axis=1)
    # Only triangles with a vertex within (nearest-vertex distance + longest edge) of a
    # query can hold its closest point: every vertex of the closest triangle is nearer than
    # that, and the vertex tree finds those few vertices before the real search.
    v, t = mesh.vertices, mesh.triangles
    longest = max(np.linalg.norm(v[t[:, a]] - v[t[:, b]], axis=1).max() for a, b in ((0, 1), (1, 2), (2, 0)))
    reach = tree.query(pts)[0] + longest + 1e-9
    near_vertex = np.zeros(len(v), bool)
    for idx in tree.query_ball_point(pts, reach):
        near_vertex[idx] = True
    pool = np.flatnonzero(near_vertex[mesh.triangles].any(axis=1))
    if len(pool) == 0:
        pool = np.arange(mesh.n_triangles)
    centroids = mesh.vertices[mesh.triangles[pool]].mean(axis=1)
    k = min(candidates, len(pool))
    cand = pool[cKDTree(centroids).query(pts, k=k)[1].reshape(len(pts), k)]
    tri = mesh.triangles[cand]  # (n, k, 3)
    v = mesh.vertices
    q = closest_point_on_triangles(np.repeat(pts[:, None], k, 1), v[tri[..., 0]], v[tri[..., 1]], v[tri[..., 2]])
    d = np.linalg.norm(q - pts[:, None], axis=2)
    best = np.argmin(d, axis=1)
    rows = np.arange(len(pts))
    return q[rows, best], cand[rows, best], d[rows, best]


def snap_to_surface(mesh: Mesh, points: np.ndarray, method: str = DEFAULT_SNAP, k: int = 12,
                    tree: Optional[cKDTree] = None) -> np.ndarray:
    """Move predicted points onto the scan.

    ``surface`` (the default): the closest point on the closest triangle; ``nearest``:
    the nearest scan vertex; ``mean-k``: the mean of the k nearest vertices (the PAL-Net
    paper's "average", k = 12). ``tree``: a search tree of ``mesh.vertices``, if one is at hand.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    tree = tree if tree is not None else cKDTree(mesh.vertices)
    if method == "surface":
        return closest_points_on_surface(mesh, pts, tree=tree)[0]
    if method == "nearest":
        return mesh.vertices[tree.query(pts)[1]]
    if method == "mean-k":
        kk = min(k, mesh.n_vertices)
        idx = tree.query(pts, k=kk)[1].reshape(len(pts), kk)
        return mesh.vertices[idx].mean(axis=1)
    raise PalnetError("unknown snapping method {!r} (use {})".format(method, ", ".join(SNAP_METHODS)))
