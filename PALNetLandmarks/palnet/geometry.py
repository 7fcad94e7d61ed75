"""Geometry every stage shares: even surface sampling, point thinning and grid subsampling,
edges and borders, vertex normals, and the decimation of dense scans.

A leaf module: it imports nothing from palnet, so alignment, patches, cleanup, synthesis
and the pipeline can all use it without importing each other.
"""
from typing import NamedTuple, Optional, Tuple

import numpy as np
from scipy.spatial import cKDTree


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
    (``triangle_ids``), and its corners are taken in the order of their shape
    (:func:`corners_in_shape_order`), so the same scan in another pose, mirrored, or with a
    slightly different region of interest, gets the same samples on the same triangles.
    """
    if len(triangles) == 0:
        return thin_points(vertices, spacing, seed)
    ids = np.arange(len(triangles)) if triangle_ids is None else np.asarray(triangle_ids)
    triangles, opposite = _shape_order(vertices, triangles)
    corners = np.take(vertices, triangles, axis=0)
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    u, w = b - a, c - a  # the cross product written out: np.cross's own overhead was a fifth of this call
    area = 0.5 * np.sqrt((u[:, 1] * w[:, 2] - u[:, 2] * w[:, 1]) ** 2 + (u[:, 2] * w[:, 0] - u[:, 0] * w[:, 2]) ** 2
                         + (u[:, 0] * w[:, 1] - u[:, 1] * w[:, 0]) ** 2)
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
    tied = _tied_corners(opposite)
    _share_tied_weights(w, tri, *tied)
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
        # A corner's place in shape order; corners shape cannot order share the first one's.
        place = np.stack([np.zeros(len(triangles), np.int64), np.where(tied[0], 0, 1),
                          np.where(tied[1], np.where(tied[0], 0, 1), 2)], axis=1).ravel()
        extra = thin_points(vertices[lonely], spacing, seed, ids=ids[first[lonely] // 3] * 3 + place[first[lonely]])
        return np.vstack([pts, extra])
    return pts


TIED_EDGES = 1e-9  # opposite edges this close in squared length (relative) count as equally long


def _tied_corners(opposite: np.ndarray):
    """Per triangle (``opposite``: the squared lengths of the edges opposite its corners a, b, c
    in shape order, :func:`_shape_order`): whether a and b, and whether b and c, face equally long
    edges (TIED_EDGES), so that shape cannot order them. The tolerance makes a triangle tied in
    the scan and in its mirror image alike, although the aligned mirror image is the mirror
    image only to the last digits."""
    la, lb, lc = opposite.T
    return (np.abs(la - lb) <= TIED_EDGES * np.maximum(la, lb)), (np.abs(lb - lc) <= TIED_EDGES * np.maximum(lb, lc))


def _share_tied_weights(w: np.ndarray, tri: np.ndarray, tied_ab: np.ndarray, tied_bc: np.ndarray) -> None:
    """In place: the barycentric weights ``w`` (N, 3) of samples on triangles ``tri`` whose
    corners shape cannot order (:func:`_tied_corners`) are shared equally by those corners, so
    the sample lies on the triangle's line of symmetry.

    Shape cannot order two such corners (an isosceles triangle's base corners), and the order
    the file lists them in is reversed in the scan's mirror image: without this, the mirror
    image got other samples on those triangles (96 of the 55,000 of the CT skin `headsq`,
    whose marching cubes make them), and other landmarks. Scans rarely have any."""
    if not len(tri):
        return
    ab, bc = tied_ab[tri], tied_bc[tri]
    if not (ab.any() or bc.any()):
        return
    both = ab & bc
    w[both] = 1.0 / 3.0
    only = ab & ~both
    w[only, 0] = w[only, 1] = 0.5 * (w[only, 0] + w[only, 1])
    only = bc & ~both
    w[only, 1] = w[only, 2] = 0.5 * (w[only, 1] + w[only, 2])


def corners_in_shape_order(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Each triangle's corners listed by the length of the edge opposite them, longest first
    (equal lengths keep the listed order).

    A point sampled at given barycentric weights then depends on the triangle's shape, not on
    the order or winding its file lists the corners in: the mirror image of a scan (whose
    triangles are listed in reverse to keep them facing out) gets the mirror image of its samples,
    and so the mirror image of its landmarks."""
    return _shape_order(vertices, triangles)[0]


def _shape_order(vertices: np.ndarray, triangles: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(:func:`corners_in_shape_order`, the squared lengths of the edges opposite the corners
    in that order, (T, 3))."""
    t = np.asarray(triangles)
    p = np.take(np.asarray(vertices, dtype=np.float64), t, axis=0)  # (T, 3, 3); far faster than vertices[t]
    e0, e1, e2 = p[:, 1] - p[:, 2], p[:, 2] - p[:, 0], p[:, 0] - p[:, 1]  # opposite each corner
    o0, o1, o2 = (np.einsum("ij,ij->i", e, e) for e in (e0, e1, e2))
    # a corner's place: the corners with a longer opposite edge (or as long, listed before it)
    p0 = (o1 > o0).astype(np.intp) + (o2 > o0)
    p1 = (o0 >= o1).astype(np.intp) + (o2 > o1)
    out = np.empty(t.size, dtype=t.dtype)
    opposite = np.empty(t.size)
    first = np.arange(0, t.size, 3)
    out[first + p0], out[first + p1], out[first + 3 - p0 - p1] = t[:, 0], t[:, 1], t[:, 2]
    opposite[first + p0], opposite[first + p1], opposite[first + 3 - p0 - p1] = o0, o1, o2
    return out.reshape(t.shape), opposite.reshape(t.shape)


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


def _grid_cells(points: np.ndarray, cell: float):
    """(each point's cell, the number of occupied cells, their centroids) of a cubic grid of
    ``cell``, cells numbered in the order of their grid coordinates. The grid's planes lie at
    multiples of ``cell``, so the grid of a mirror image (x -> -x) is the mirror image of the grid."""
    q = np.floor(points / cell).astype(np.int64)
    q -= q.min(axis=0)
    span = q.max(axis=0) + 1
    keys = (q[:, 0] * span[1] + q[:, 1]) * span[2] + q[:, 2]
    cells, which, count = np.unique(keys, return_inverse=True, return_counts=True)
    which = which.reshape(-1)
    centroid = np.stack([np.bincount(which, points[:, k], len(cells)) for k in range(3)], axis=1) / count[:, None]
    return which, len(cells), centroid


def grid_subsample(points: np.ndarray, cell: float) -> np.ndarray:
    """One point per occupied cubic cell, the one nearest the centroid of the cell's points:
    an even density whatever the triangulation.

    The choice and the order of the result (by cell) depend only on the set of points, not
    on the order a file lists them in: a re-saved scan whose vertices come in another order
    is subsampled alike, and so is aligned alike.
    """
    points = np.asarray(points)
    if len(points) == 0:
        return points
    which, _, centroid = _grid_cells(points, cell)
    off = ((points - centroid[which]) ** 2).sum(axis=1)
    # Sorted by cell, then distance to the centroid, then x (points tied on both are, in
    # practice, duplicates: equal whichever is taken): the first of each cell is kept.
    order = np.lexsort((points[:, 0], off, which))
    first = np.ones(len(order), dtype=bool)
    first[1:] = which[order][1:] != which[order][:-1]
    return points[order[first]]


def grid_means(points: np.ndarray, cell: float) -> np.ndarray:
    """The centroid of each occupied cubic cell's points, in the order of the cells.

    Unlike :func:`grid_subsample`, which picks one of the points, the result moves continuously
    with the points: samples laid out regularly (a coarse triangle's) sit at equal distances
    from their cell's centroid, and a rounding error would decide which one is picked."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) == 0:
        return points
    return _grid_cells(points, cell)[2]


def edges_and_border(triangles: np.ndarray, n: int) -> Tuple[np.ndarray, np.ndarray]:
    """Each edge of a triangle mesh with ``n`` vertices once, (E, 2) lower index first, and
    the mask of border vertices (on an edge of only one triangle: a hole or a cut)."""
    t = np.asarray(triangles, dtype=np.int64)
    a = np.concatenate([t[:, 0], t[:, 1], t[:, 2]])
    b = np.concatenate([t[:, 1], t[:, 2], t[:, 0]])
    key = np.sort(np.minimum(a, b) * n + np.maximum(a, b))  # sorted keys: np.unique, but faster here
    first = np.r_[True, key[1:] != key[:-1]]
    once = first & np.r_[key[1:] != key[:-1], True]
    border = np.zeros(n, bool)
    border[key[once] // n] = True
    border[key[once] % n] = True
    key = key[first]
    return np.stack([key // n, key % n], axis=1), border


def drop_unused(v: np.ndarray, t: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The vertices that some triangle uses, and the triangles renumbered to them."""
    used = np.zeros(len(v), bool)
    used[t.ravel()] = True
    return v[used], (np.cumsum(used) - 1)[t]


def vertex_normals(v: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals."""
    fn = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])
    n = np.zeros_like(v)
    for k in range(3):
        for c in range(3):
            n[:, c] += np.bincount(t[:, k], fn[:, c], minlength=len(v))
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


class Clusters(NamedTuple):
    """A mesh decimated by vertex clustering (see :func:`cluster_decimate`)."""

    vertices: np.ndarray  # (M, 3) the centroid of each cluster's vertices, in the input's frame and units
    triangles: np.ndarray  # (T, 3) the input's triangles between three different clusters, each once
    cluster: np.ndarray  # (N,) the cluster of each input vertex


def least_axes(cov: np.ndarray) -> np.ndarray:
    """The unit eigenvector of the least eigenvalue of each symmetric 3x3 matrix in ``cov``
    (N, 3, 3), sign arbitrary, as ``np.linalg.eigh(cov)[1][:, :, 0]`` gives it, in a quarter
    of its time: the least eigenvalue in closed form (the trigonometric solution of the
    characteristic cubic), then the longest cross product of two rows of cov - lambda I.
    Matrices whose two least eigenvalues (almost) coincide, where that cross product is
    too short to be trusted, are handed to ``eigh``."""
    a00, a11, a22 = cov[:, 0, 0], cov[:, 1, 1], cov[:, 2, 2]
    a01, a02, a12 = cov[:, 0, 1], cov[:, 0, 2], cov[:, 1, 2]
    q = (a00 + a11 + a22) / 3.0
    b00, b11, b22 = a00 - q, a11 - q, a22 - q
    p2 = b00 * b00 + b11 * b11 + b22 * b22 + 2.0 * (a01 * a01 + a02 * a02 + a12 * a12)
    p = np.sqrt(p2 / 6.0)
    det = b00 * (b11 * b22 - a12 * a12) - a01 * (a01 * b22 - a12 * a02) + a02 * (a01 * a12 - b11 * a02)
    half = np.clip(det / np.maximum(2.0 * p ** 3, 1e-300), -1.0, 1.0)
    lam = q + 2.0 * p * np.cos(np.arccos(half) / 3.0 + 2.0 * np.pi / 3.0)
    rows = cov - lam[:, None, None] * np.eye(3)
    cross = np.stack([np.cross(rows[:, 0], rows[:, 1]), np.cross(rows[:, 0], rows[:, 2]),
                      np.cross(rows[:, 1], rows[:, 2])], axis=1)
    length = np.einsum("nci,nci->nc", cross, cross)
    best = np.argmax(length, axis=1)
    each = np.arange(len(cov))
    axis = cross[each, best] / np.sqrt(np.maximum(length[each, best], 1e-300))[:, None]
    # The cross product is about (l1 - l3)(l2 - l3) long: far below p2, l2 and l3 (nearly) coincide.
    unsure = ~(length[each, best] > 1e-16 * p2 * p2)
    if unsure.any():
        axis[unsure] = np.linalg.eigh(cov[unsure])[1][:, :, 0]
    return axis


def principal_coordinates(points: np.ndarray) -> np.ndarray:
    """``points`` (N, 3) in their principal frame: centred, along their axes of largest to least
    spread, each axis pointing to the side its points' third moment leans to. The frame moves
    with the points under any rigid motion, so these coordinates do not depend on the pose."""
    centroid = points.mean(axis=0)
    cov = points.T @ points / len(points) - np.outer(centroid, centroid)
    axes = np.linalg.eigh(cov)[1].T[::-1]
    along = points @ axes.T - centroid @ axes.T
    along *= np.where(np.einsum("ij,ij,ij->j", along, along, along) < 0, -1.0, 1.0)
    return along


def cluster_decimate(vertices: np.ndarray, triangles: np.ndarray, cell: float) -> Clusters:
    """The mesh with the vertices in each ``cell``-sized cube merged into one at their centroid:
    a dense scan brought to the resolution the later stages read, in time and memory linear in
    its size. The cubes are laid in the scan's principal frame (:func:`principal_coordinates`) and
    the clusters and triangles come out sorted by cube, so the result does not depend on the
    scan's pose or on the order its file lists vertices or triangles in (beyond rounding).
    A triangle keeps the way its corners run (its normal's side).
    Triangles whose corners fall into fewer than three clusters vanish, and of the triangles
    that become the same, one stays when they are an odd number and none when even: a fold of
    the surface into one cube gives such pairs, and keeping one of a pair would leave its edges
    as a border where the scan has none (counted modulo 2, the border of the result is the
    image of the scan's own border)."""
    v = np.asarray(vertices, dtype=np.float64)
    tri = np.asarray(triangles, dtype=np.int64).reshape(-1, 3)
    q = np.floor(principal_coordinates(v) / cell).astype(np.int64)
    q -= q.min(axis=0)
    span = q.max(axis=0) + 1
    keys = (q[:, 0] * span[1] + q[:, 1]) * span[2] + q[:, 2]
    del q
    cells, cluster, count = np.unique(keys, return_inverse=True, return_counts=True)
    cluster = cluster.reshape(-1)
    m = len(cells)
    centres = np.stack([np.bincount(cluster, v[:, k], m) for k in range(3)], axis=1) / count[:, None]
    return Clusters(centres, _cluster_triangles(cluster[tri], m), cluster)


def _cluster_triangles(t: np.ndarray, m: int) -> np.ndarray:
    """The triangles (T, 3) between ``m`` clusters that cluster_decimate keeps (see there)."""
    t = t[(t[:, 0] != t[:, 1]) & (t[:, 1] != t[:, 2]) & (t[:, 0] != t[:, 2])]
    if len(t):
        s = np.sort(t, axis=1)
        # +1 where the corners run the way of the sorted ones (two cyclic ascents), else -1
        turn = 2 * ((t[:, 0] < t[:, 1]).astype(np.int64) + (t[:, 1] < t[:, 2]) + (t[:, 2] < t[:, 0])) - 3
        if m < 2_000_000:  # m**3 fits in 63 bits
            _, first, which, times = np.unique((s[:, 0] * m + s[:, 1]) * m + s[:, 2], return_index=True,
                                               return_inverse=True, return_counts=True)
        else:
            _, first, which, times = np.unique(s, axis=0, return_index=True, return_inverse=True, return_counts=True)
        odd = times % 2 == 1
        # each kept triangle faces the way most of its copies do (an odd number: never a tie)
        facing = np.bincount(which.reshape(-1), turn, len(times))[odd] > 0
        s = s[first[odd]]
        t = np.where(facing[:, None], s, s[:, [0, 2, 1]])
    return t
