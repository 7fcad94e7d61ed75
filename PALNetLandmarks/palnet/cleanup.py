"""Scanner spikes: single vertices shot out of (or into) the surface.

A spike's vertex lies far from the centre of its neighbours compared with how far
apart those neighbours are; a vertex of a smooth surface, even on the tip of the
nose or the rim of an ear, lies close to it. Vertices on the border of a mesh (a
hole, a cut) are not judged: their neighbours all lie on one side. Spikes are
taken out of a working copy of the scan before alignment, sampling and snapping
(the user's mesh is never changed), so that they neither pull the face fit nor
end up in the patches the network reads, nor catch a landmark when it is snapped.
"""
from typing import Tuple

import numpy as np
from scipy.spatial import cKDTree

from .types import Mesh

SPIKE_RATIO = 1.5  # offset from the neighbours' centre / the neighbours' spread around it
MIN_SPIKE_MM = 1.5  # a vertex this close to its neighbours' centre does no harm
POINT_CLOUD_NEIGHBOURS = 8


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


def _neighbour_centres(mesh: Mesh):
    """(centre of each vertex's neighbours, their mean distance from it, number of neighbours,
    whether the vertex is on the mesh's border)."""
    v = mesh.vertices
    n = len(v)
    if len(mesh.triangles):
        edges, border = edges_and_border(mesh.triangles, n)
        lo, hi = edges[:, 0], edges[:, 1]
        keep = lo != hi
        i, j = np.concatenate([lo[keep], hi[keep]]), np.concatenate([hi[keep], lo[keep]])
        count = np.bincount(i, minlength=n).astype(np.float64)
        centre = np.stack([np.bincount(i, v[j, c], minlength=n) for c in range(3)], axis=1)
        centre /= np.maximum(count, 1)[:, None]
        spread = np.bincount(i, np.linalg.norm(v[j] - centre[i], axis=1), minlength=n) / np.maximum(count, 1)
        return centre, spread, count, border
    k = min(POINT_CLOUD_NEIGHBOURS + 1, n)
    idx = cKDTree(v).query(v, k=k)[1][:, 1:]
    nb = v[idx]
    centre = nb.mean(axis=1)
    spread = np.linalg.norm(nb - centre[:, None], axis=2).mean(axis=1)
    return centre, spread, np.full(n, float(k - 1)), np.zeros(n, bool)


def find_spikes(mesh: Mesh, ratio: float = SPIKE_RATIO, min_offset: float = MIN_SPIKE_MM) -> np.ndarray:
    """Mask of the vertices that stick out of the surface as spikes (``min_offset`` in the mesh's units)."""
    if mesh.n_vertices < 10:
        return np.zeros(mesh.n_vertices, bool)
    centre, spread, count, border = _neighbour_centres(mesh)
    offset = np.linalg.norm(mesh.vertices - centre, axis=1)
    # A border vertex has all its neighbours on one side: its offset means nothing.
    return (count >= 3) & ~border & (offset > ratio * np.maximum(spread, 1e-12)) & (offset > min_offset)


def remove_spikes(mesh: Mesh, ratio: float = SPIKE_RATIO, min_offset: float = MIN_SPIKE_MM) -> Tuple[Mesh, int]:
    """A copy of ``mesh`` without its spike vertices and their triangles, and how many went."""
    spikes = find_spikes(mesh, ratio, min_offset)
    n = int(spikes.sum())
    if n == 0:
        return mesh, 0
    keep = ~spikes
    remap = np.cumsum(keep) - 1
    tri = mesh.triangles[keep[mesh.triangles].all(axis=1)] if len(mesh.triangles) else mesh.triangles
    return Mesh(mesh.vertices[keep], remap[tri], mesh.units, mesh.source), n
