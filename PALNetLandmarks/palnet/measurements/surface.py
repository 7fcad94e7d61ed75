"""Lengths along a scan's surface (where a clinician would lay a tape measure).

Method: the shortest path between the landmarks' nearest vertices on the mesh's edge graph
(Dijkstra, ``scipy.sparse.csgraph``; the graph also holds, across each edge shared by two
triangles, the chord between their far corners), then straightened on the surface: the path is
resampled evenly and each inner point is moved, repeatedly, to the midpoint of its neighbours
and back onto the nearest point of the surface (first 9 points, then twice as many, and so on
down to a 1 mm spacing). Edge paths zig-zag along the triangles and come out several per cent
long; straightened they are within 0.1 % of the true geodesic on a sphere and a cylinder at scan
resolutions (Testing/test_measure_arcs.py, tools/bench_measurements.py arcs, docs/measurements.md).
The landmarks themselves are the path's ends: each is put on the closest point of the surface
first. A path along the edge of a hole or cut gets a note: a tape would have crossed it.

The uncertainty of an arc is propagated to first order: moving a landmark by ``d`` changes the
length by ``g . d``, ``g`` being the difference of the path's unit directions arriving at and
leaving it (for an end, only one of them), so an isotropic positional SD ``s`` adds
``|g|^2 s^2`` to the variance.
"""
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..datatypes import Mesh

# Landmarks farther than this from the surface are on another scan (or in other units).
MAX_OFF_SURFACE_MM = 5.0
RIM_MM = 1.0  # a path this close to the scan's border detours round a hole or cut (says the arc's note)
RIM_SKIP_MM = 4.0  # ... not counting the path's first and last few mm (a landmark may sit on a rim)
LOCAL_MM = 2.0  # the first spacing of a second, cautious straightening (see SurfaceGraph._straighten)
FINE_MM = 1.0  # the straightened path's final point spacing; it starts at an eighth of the length
ITERATIONS = 30  # at most this many midpoint moves per spacing; a pass ends sooner once no point moves
TOLERANCE = 0.002  # more than this fraction of the spacing (each halving has few new wiggles to remove)
TANGENT_MM = 3.0  # stretch of path over which a landmark's arriving/leaving direction is taken


@dataclass
class Arc:
    """An arc's length (mm, None when it could not be measured, ``note`` says why), its path
    on the surface (K, 3), and per landmark of the path the gradient of the length (for SE)."""

    length: Optional[float]
    path: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    gradients: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    note: str = ""


class SurfaceGraph:
    """A mesh (in mm) prepared for many shortest paths: its edge graph and search trees."""

    def __init__(self, mesh: Mesh):
        from scipy.sparse import coo_matrix
        from scipy.spatial import cKDTree

        if mesh.n_triangles == 0:
            raise ValueError("a surface length needs a mesh with triangles")
        self.mesh = mesh
        v, t = mesh.vertices, mesh.triangles
        n = len(v)
        corner = np.concatenate([t[:, [0, 1, 2]], t[:, [1, 2, 0]], t[:, [2, 0, 1]]])  # edge (a, b), opposite c
        key = np.minimum(corner[:, 0], corner[:, 1]) * n + np.maximum(corner[:, 0], corner[:, 1])
        order = np.argsort(key, kind="stable")
        key, opposite = key[order], corner[order, 2]
        first = np.ones(len(key), dtype=bool)
        first[1:] = key[1:] != key[:-1]
        keys = key[first]
        count = np.diff(np.append(np.flatnonzero(first), len(key)))
        edges = np.stack([keys // n, keys % n], axis=1)
        rim = edges[count == 1]  # edges of one triangle only: the borders of holes and cuts
        self.rim = cKDTree(v[np.unique(rim)]) if len(rim) else None
        # Across each edge shared by two triangles, the chord between their far corners too: edge
        # paths then zig-zag less and favour no direction of the triangulation (whose bias can
        # otherwise send a path round the wrong side of a near tie).
        pair = np.flatnonzero(first)[count == 2]
        chords = np.stack([opposite[pair], opposite[pair + 1]], axis=1)
        edge_mm = np.linalg.norm(v[edges[:, 0]] - v[edges[:, 1]], axis=1)
        self.edge_mm = float(np.median(edge_mm)) if len(edge_mm) else 1.0
        edges = np.sort(np.concatenate([edges, chords]), axis=1)
        edges = edges[edges[:, 0] != edges[:, 1]]
        # Once each: the sparse matrix would add up the weights of an edge given twice.
        edges = edges[np.unique(edges[:, 0] * n + edges[:, 1], return_index=True)[1]]
        length = np.linalg.norm(v[edges[:, 0]] - v[edges[:, 1]], axis=1)
        length = np.maximum(length, 1e-9)  # a zero weight would read as "no edge"
        self.graph = coo_matrix((np.concatenate([length, length]),
                                 (np.concatenate([edges[:, 0], edges[:, 1]]),
                                  np.concatenate([edges[:, 1], edges[:, 0]]))), shape=(n, n)).tocsr()
        self.tree = cKDTree(v)
        self._project = None  # built on the first arc

    # ---------------------------------------------------------------- points on the surface

    def on_surface(self, points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Closest surface points and their distances, (K, 3) and (K,)."""
        from ..snap import closest_points_on_surface
        q, _, d = closest_points_on_surface(self.mesh, np.asarray(points, dtype=np.float64).reshape(-1, 3))
        return q, d

    # ---------------------------------------------------------------- paths

    def arcs(self, paths: Sequence[np.ndarray], straighten: bool = True) -> List[Arc]:
        """One :class:`Arc` per path of landmark positions ``(K_i, 3)`` (mm, no NaN), each the
        surface path through its points in order. Shortest paths from each distinct start are
        computed once for all the arcs. ``straighten=False``: the edge paths as they are (to
        measure what straightening gains)."""
        from scipy.sparse.csgraph import dijkstra

        paths = [np.asarray(p, dtype=np.float64).reshape(-1, 3) for p in paths]
        if not paths:
            return []
        allpts = np.concatenate(paths)
        surf, off = self.on_surface(allpts)
        vid = self.tree.query(surf)[1]
        starts = sorted({int(vid[k]) for k in _segment_starts(paths)})
        dist, pred = dijkstra(self.graph, directed=False, indices=starts, return_predecessors=True)
        row = {s: i for i, s in enumerate(starts)}
        out, pieces = [], []  # type: List[Optional[Arc]], List[np.ndarray]
        owner = []  # type: List[int]  the arc each piece belongs to
        start = 0
        for i, pts in enumerate(paths):
            k = slice(start, start + len(pts))
            start += len(pts)
            far = np.flatnonzero(off[k] > max(MAX_OFF_SURFACE_MM, 3 * self.edge_mm))
            if len(far):
                out.append(Arc(None, note="landmark {} of the arc lies {:.1f} mm from the scan's surface (another "
                                          "scan, or other units?)".format(int(far[0]) + 1, off[k][far[0]])))
                continue
            mine = []
            for a, b, pa, pb in zip(vid[k][:-1], vid[k][1:], surf[k][:-1], surf[k][1:]):
                r = row[int(a)]
                if not np.isfinite(dist[r, b]):
                    break
                mine.append(np.concatenate([pa[None], self.mesh.vertices[_walk(pred[r], int(a), int(b))], pb[None]]))
            if len(mine) < len(pts) - 1:
                out.append(Arc(None, note="the scan's surface does not connect the arc's landmarks (pieces "
                                          "apart, or a hole all across)"))
                continue
            out.append(None)
            pieces.extend(mine)
            owner.extend([i] * len(mine))
        taut = self._straighten(pieces) if straighten else pieces
        for i in range(len(paths)):
            if out[i] is None:
                out[i] = self._arc_from([p for p, o in zip(taut, owner) if o == i])
        return out  # type: ignore[return-value]

    def _arc_from(self, pieces: List[np.ndarray]) -> Arc:
        arc = _arc_from(pieces)
        if self.rim is not None:
            # Only away from the landmarks: one may sit on a hole's rim (subnasale by the nostrils).
            inner = np.concatenate([p[_away_from_ends(p, RIM_SKIP_MM)] for p in pieces])
            if len(inner) and np.min(self.rim.query(inner)[0]) < max(RIM_MM, self.edge_mm):
                arc.note = "the path runs along the edge of a hole or cut in the scan: the arc may be too long"
        return arc

    def _straighten(self, polylines: List[np.ndarray]) -> List[np.ndarray]:
        """Polylines on the surface pulled taut (ends fixed), all at once; see the module's description.

        Straightening only ever shortens a path. Where the result is longer than the edge path
        (a midpoint deep inside a chord was put on another sheet of the surface, the inside of a
        nostril say), that path is straightened again from a 2 mm spacing only, whose small
        steps stay on its sheet, and kept as it was if that does not shorten it either."""
        if not polylines:
            return []
        if self._project is None:
            self._project = _Projector(self.mesh)
        lengths = np.array([_length(p) for p in polylines])
        taut = self._pull(polylines, lengths / 8.0)
        worse = [i for i, p in enumerate(taut) if _length(p) > lengths[i] + 1e-6]
        if worse:
            again = self._pull([polylines[i] for i in worse], np.full(len(worse), LOCAL_MM))
            for i, p in zip(worse, again):
                taut[i] = p if _length(p) <= lengths[i] + 1e-6 else polylines[i]
        return taut

    def _pull(self, polylines: List[np.ndarray], spacing: np.ndarray) -> List[np.ndarray]:
        paths = list(polylines)
        while True:
            steps = np.maximum(spacing, FINE_MM)
            paths = [_resample(p, st) for p, st in zip(paths, steps)]
            sizes = np.array([len(p) for p in paths])
            flat = np.concatenate(paths)
            first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            inner = np.ones(len(flat), dtype=bool)
            inner[first] = inner[first + sizes - 1] = False
            idx = np.flatnonzero(inner)
            tol = TOLERANCE * np.repeat(steps, sizes)[idx]
            for _ in range(ITERATIONS if len(idx) else 0):
                moved = self._project(0.5 * (flat[idx - 1] + flat[idx + 1]))
                change = np.abs(moved - flat[idx]).max(axis=1)
                flat[idx] = moved
                if np.all(change < tol):
                    break
            paths = np.split(flat, first[1:])
            if np.all(steps <= FINE_MM):
                return paths
            spacing = spacing * 0.5


def _away_from_ends(path: np.ndarray, mm: float) -> np.ndarray:
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
    return (s > mm) & (s < s[-1] - mm)


def _segment_starts(paths):
    """Index, among all the paths' points together, of each point that starts a segment."""
    k0 = 0
    for pts in paths:
        yield from range(k0, k0 + len(pts) - 1)
        k0 += len(pts)


def _walk(pred: np.ndarray, a: int, b: int) -> List[int]:
    """Vertices from a to b along Dijkstra's predecessor tree."""
    chain = [b]
    while chain[-1] != a:
        chain.append(int(pred[chain[-1]]))
    return chain[::-1]


def _length(path: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(path, axis=0), axis=1).sum())


def _resample(path: np.ndarray, step: float) -> np.ndarray:
    """Points every ``step`` mm along a polyline, its ends kept."""
    seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    total = s[-1]
    if total <= 0:
        return path[[0, -1]].copy()
    n = max(2, int(np.ceil(total / step)) + 1)
    at = np.linspace(0.0, total, n)
    return np.stack([np.interp(at, s, path[:, i]) for i in range(3)], axis=1)


def _direction(path: np.ndarray, from_start: bool) -> np.ndarray:
    """Unit direction of the path leaving its start (or arriving at its end), over TANGENT_MM."""
    p = path if from_start else path[::-1]
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    s = np.cumsum(seg)
    j = int(min(np.searchsorted(s, TANGENT_MM), len(p) - 2)) + 1
    d = p[j] - p[0]
    n = np.linalg.norm(d)
    d = d / n if n > 0 else d
    return d if from_start else -d


def _arc_from(pieces: List[np.ndarray]) -> Arc:
    if not pieces:
        return Arc(0.0, np.zeros((0, 3)), np.zeros((1, 3)))
    length = sum(_length(p) for p in pieces)
    grads = np.zeros((len(pieces) + 1, 3))
    for j, piece in enumerate(pieces):
        grads[j] -= _direction(piece, True)  # moving the start along the path shortens it
        grads[j + 1] += _direction(piece, False)  # moving the end onwards lengthens it
    path = np.concatenate([pieces[0]] + [p[1:] for p in pieces[1:]])
    return Arc(float(length), path, grads)


def arc_se(arc: Arc, sd: np.ndarray) -> Optional[float]:
    """First-order standard error of an arc from its landmarks' isotropic SDs (mm)."""
    if arc.length is None or len(arc.gradients) != len(sd) or not np.all(np.isfinite(sd)):
        return None
    return float(np.sqrt(np.sum((np.linalg.norm(arc.gradients, axis=1) * sd) ** 2)))


class _Projector:
    """Closest points on a (small) mesh, its triangles' search tree built once for many calls."""

    def __init__(self, mesh: Mesh, candidates: int = 8):
        from scipy.spatial import cKDTree
        v, t = mesh.vertices, mesh.triangles
        self.a, self.b, self.c = v[t[:, 0]], v[t[:, 1]], v[t[:, 2]]
        self.tree = cKDTree((self.a + self.b + self.c) / 3.0)
        self.k = int(min(candidates, len(t)))

    def __call__(self, points: np.ndarray) -> np.ndarray:
        from ..snap import closest_point_on_triangles
        cand = self.tree.query(points, k=self.k)[1].reshape(len(points), self.k)
        q = closest_point_on_triangles(np.repeat(points[:, None], self.k, 1), self.a[cand], self.b[cand], self.c[cand])
        best = np.argmin(np.linalg.norm(q - points[:, None], axis=2), axis=1)
        return q[np.arange(len(points)), best]
