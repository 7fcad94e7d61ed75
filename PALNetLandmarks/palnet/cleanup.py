"""Scanner spikes: single vertices shot out of (or into) the surface.

A spike's vertex lies far from the centre of its neighbours compared with how far
apart those neighbours are; a vertex of a smooth surface, even on the tip of the
nose or the rim of an ear, lies close to it. Vertices on the border of a mesh (a
hole, a cut) are not judged: their neighbours all lie on one side. Spikes are
taken out of a working copy of the scan before alignment, sampling and snapping
(the user's mesh is never changed), so that they neither pull the face fit nor
end up in the patches the network reads, nor catch a landmark when it is snapped.

Loose fragments (a hand, a chin rest, scanner debris: small pieces not connected to
the scan and well apart from it) are left out of the same working copy: the
alignment starts the face on the scan's most extreme points, and an object in
front of the face would be one.
"""
from typing import Optional, Tuple

import numpy as np
from scipy.spatial import cKDTree

from .datatypes import Mesh
from .geometry import edges_and_border

SPIKE_RATIO = 1.5  # offset from the neighbours' centre / the neighbours' spread around it
MIN_SPIKE_MM = 1.5  # a vertex this close to its neighbours' centre does no harm
POINT_CLOUD_NEIGHBOURS = 8
FRAGMENT_FRACTION = 0.05  # a piece with fewer vertices than this fraction of the largest one is small
FRAGMENT_GAP_MM = 15.0  # and it is loose when none of its vertices comes this close to the largest piece


def _neighbour_centres(mesh: Mesh, edges: Optional[Tuple[np.ndarray, np.ndarray]] = None):
    """(centre of each vertex's neighbours, their mean distance from it, number of neighbours,
    whether the vertex is on the mesh's border). ``edges``: ``edges_and_border`` of the mesh, if known."""
    v = mesh.vertices
    n = len(v)
    if len(mesh.triangles):
        edges, border = edges if edges is not None else edges_and_border(mesh.triangles, n)
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


def find_spikes(mesh: Mesh, ratio: float = SPIKE_RATIO, min_offset: float = MIN_SPIKE_MM,
                edges: Optional[Tuple[np.ndarray, np.ndarray]] = None, clustered: bool = False) -> np.ndarray:
    """Mask of the vertices that stick out of the surface as spikes (``min_offset`` in the mesh's units).
    ``edges``: ``edges_and_border`` of the mesh, if already known.

    ``clustered``: the mesh is a dense scan decimated by vertex clustering (pipeline.DENSE_VERTICES),
    where a spike of the scan is a cluster of its own left with as few as two neighbours and
    often on a border (a fan of triangles hanging from it); its border vertices are judged too,
    since no edge between neighbouring clusters is long enough to put one ``min_offset`` from
    its neighbours' centre, and so is a cluster that no triangle uses (nothing of the surface
    is left around it)."""
    if mesh.n_vertices < 10:
        return np.zeros(mesh.n_vertices, bool)
    centre, spread, count, border = _neighbour_centres(mesh, edges)
    offset = np.linalg.norm(mesh.vertices - centre, axis=1)
    sticks_out = (offset > ratio * np.maximum(spread, 1e-12)) & (offset > min_offset)
    if clustered and len(mesh.triangles):
        return (sticks_out & (count >= 2)) | (count == 0)
    # A border vertex has all its neighbours on one side: its offset means nothing.
    return (count >= 3) & ~border & sticks_out



def remove_spikes(mesh: Mesh, ratio: float = SPIKE_RATIO, min_offset: float = MIN_SPIKE_MM,
                  edges: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> Tuple[Mesh, int]:
    """A copy of ``mesh`` without its spike vertices and their triangles, and how many went
    (``mesh`` itself when none). ``edges``: ``edges_and_border`` of the mesh, if already known."""
    spikes = find_spikes(mesh, ratio, min_offset, edges)
    n = int(spikes.sum())
    return (remove_vertices(mesh, spikes), n) if n else (mesh, 0)


def find_fragments(mesh: Mesh, gap: float = FRAGMENT_GAP_MM, fraction: float = FRAGMENT_FRACTION,
                   edges: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> np.ndarray:
    """Mask of the vertices of loose fragments: connected pieces smaller than ``fraction``
    of the largest piece with no vertex within ``gap`` (the mesh's units) of it. Pieces
    that touch the scan (eyes, an ear cut off by a hole) stay. Point clouds: none.
    ``edges``: ``edges_and_border`` of the mesh, if already known."""
    n = mesh.n_vertices
    if not len(mesh.triangles) or n < 10:
        return np.zeros(n, bool)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    edges = (edges if edges is not None else edges_and_border(mesh.triangles, n))[0]
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    count, label = connected_components(graph, directed=False)
    if count == 1:
        return np.zeros(n, bool)
    size = np.bincount(label, minlength=count)
    used = np.zeros(n, bool)
    used[mesh.triangles.ravel()] = True
    size_used = np.bincount(label[used], minlength=count)
    main = int(np.argmax(size_used))
    small = (size < fraction * size_used[main]) & (np.arange(count) != main)
    if not small.any():
        return np.zeros(n, bool)
    cand_idx = np.flatnonzero(small[label])
    cand = mesh.vertices[cand_idx]
    # Only the largest piece's vertices within ``gap`` of the candidates' bounding box can be near them.
    body = mesh.vertices[label == main]
    body = body[((body >= cand.min(axis=0) - gap) & (body <= cand.max(axis=0) + gap)).all(axis=1)]
    near = np.zeros(count, bool)
    if len(body):
        tree = cKDTree(body)
        piece = label[cand_idx]
        order = np.argsort(piece, kind="stable")
        first = np.flatnonzero(np.r_[True, piece[order][1:] != piece[order][:-1]])
        for members in np.split(order, first[1:]):
            pts = cand[members]
            step = max(1, len(pts) // 1000)
            # Evenly spread subsets in turn: a piece that touches the scan (an eye) is settled by the
            # first, and a dense scan's eyes are not searched vertex by vertex (5 s at 3M vertices).
            for start in range(step):
                if np.isfinite(tree.query(pts[start::step], distance_upper_bound=gap)[0]).any():
                    near[piece[members[0]]] = True
                    break
    return (small & ~near)[label]


def remove_vertices(mesh: Mesh, drop: np.ndarray) -> Mesh:
    """A copy of ``mesh`` without the ``drop`` vertices and their triangles."""
    keep = ~drop
    remap = np.cumsum(keep) - 1
    tri = mesh.triangles[keep[mesh.triangles].all(axis=1)] if len(mesh.triangles) else mesh.triangles
    return Mesh(mesh.vertices[keep], remap[tri], mesh.units, mesh.source)
