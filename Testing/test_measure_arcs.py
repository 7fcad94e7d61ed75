"""Lengths along a scan's surface: known geodesics on a sphere and a cylinder, the arcs of the
shipped definitions on the sample scan, and the cases where an arc cannot be measured."""
import numpy as np
import pytest

from palnet import Landmarks, Mesh
from palnet.measurements import Definitions, measure
from palnet.measurements.surface import SurfaceGraph, arc_se


def icosphere(radius: float, subdivisions: int) -> Mesh:
    t = (1 + 5 ** 0.5) / 2
    v = np.array([[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
                  [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]], float)
    f = np.array([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
                  [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5],
                  [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]])
    for _ in range(subdivisions):
        v = list(v)
        mids, faces = {}, []

        def mid(a, b):
            key = (min(a, b), max(a, b))
            if key not in mids:
                mids[key] = len(v)
                v.append((v[a] + v[b]) / 2)
            return mids[key]
        for a, b, c in f:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            faces += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
        v, f = np.array(v), np.array(faces)
    v = v / np.linalg.norm(v, axis=1)[:, None]
    return Mesh(v * radius, f)


def cylinder(radius: float, height: float, around: int, rings: int, seed: int = 0) -> Mesh:
    """An open cylinder along z with slightly irregular vertices (as a scan's triangulation is)."""
    rng = np.random.default_rng(seed)
    th = np.linspace(0, 2 * np.pi, around, endpoint=False)
    z = np.linspace(0, height, rings)
    T, Z = np.meshgrid(th, z)
    T = T + rng.uniform(-0.3, 0.3, T.shape) * (2 * np.pi / around)
    v = np.stack([radius * np.cos(T), radius * np.sin(T), Z], -1).reshape(-1, 3)
    i, j = np.meshgrid(np.arange(rings - 1), np.arange(around), indexing="ij")
    a = (i * around + j).ravel()
    b = (i * around + (j + 1) % around).ravel()
    tri = np.concatenate([np.stack([a, b, b + around], 1), np.stack([a, b + around, a + around], 1)])
    return Mesh(v, tri)


def test_geodesics_on_a_sphere_within_half_a_percent():
    r = 90.0
    graph = SurfaceGraph(icosphere(r, 4))  # 2562 vertices, edges about 7 mm
    rng = np.random.default_rng(0)
    ends, truths = [], []
    while len(ends) < 12:
        a, b = rng.normal(size=(2, 3))
        a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
        angle = np.arccos(np.clip(a @ b, -1, 1))
        if 0.2 < angle < np.radians(120):  # near-opposite points have many shortest paths: left out
            ends.append(np.array([a, b]) * r)
            truths.append(r * angle)
    for arc, truth in zip(graph.arcs(ends), truths):
        assert arc.length == pytest.approx(truth, rel=0.005)
        assert np.allclose(np.linalg.norm(arc.path, axis=1), r, atol=0.5)  # on the surface all along


def test_geodesics_on_a_cylinder_are_helices():
    r = 60.0
    graph = SurfaceGraph(cylinder(r, 200.0, 90, 60))
    rng = np.random.default_rng(1)
    for _ in range(6):
        t1, t2 = rng.uniform(0, 2 * np.pi, 2)
        z1, z2 = rng.uniform(30, 170, 2)
        turn = abs((t2 - t1 + np.pi) % (2 * np.pi) - np.pi)
        truth = np.hypot(r * turn, z2 - z1)
        ends = np.array([[r * np.cos(t1), r * np.sin(t1), z1], [r * np.cos(t2), r * np.sin(t2), z2]])
        assert graph.arcs([ends])[0].length == pytest.approx(truth, rel=0.005)


def test_a_path_through_a_middle_landmark_and_its_standard_error():
    r = 90.0
    graph = SurfaceGraph(icosphere(r, 4))
    a, m, b = (np.array(x, float) for x in ([1, 0, 0], [0, 1, 0], [0, 0, 1]))
    arc = graph.arcs([np.array([a, m, b]) * r])[0]
    assert arc.length == pytest.approx(r * np.pi, rel=0.005)  # two quarter circles
    # Ends: the length changes as fast as they move along the path; the kink at m by sqrt(2).
    g = np.linalg.norm(arc.gradients, axis=1)
    assert g[0] == pytest.approx(1.0, abs=0.02) and g[2] == pytest.approx(1.0, abs=0.02)
    assert g[1] == pytest.approx(np.sqrt(2), abs=0.05)
    assert arc_se(arc, np.array([1.0, 1.0, 1.0])) == pytest.approx(2.0, abs=0.05)


def test_arcs_on_the_sample_scan(sample):
    mesh, face = sample
    conf = Landmarks(face.labels, face.points, np.full(len(face), 0.8), units=face.units)
    got = {m.id: m for m in measure(conf, mesh=mesh)}
    d = face.as_dict()
    for mid, (a, mid_lab, b) in {"t-n-t": ("t_R", "n", "t_L"), "t-sn-t": ("t_R", "sn", "t_L"),
                                 "t-pg-t": ("t_R", "pg", "t_L")}.items():
        m = got[mid]
        chord = np.linalg.norm(d[a] - d[mid_lab]) + np.linalg.norm(d[mid_lab] - d[b])
        assert chord < m.value < 1.3 * chord, mid  # along the skin: longer than the straight lines
        assert 0.5 < m.se < 3.0 and m.units == "mm" and m.landmarks == (a, mid_lab, b)


def test_arc_in_other_units_and_on_another_scan(sample):
    mesh, face = sample
    defs = Definitions.from_dict({"format": "palnet-measurements", "measurements": [
        {"id": "arc", "kind": "arc", "landmarks": ["t_R", "sn", "t_L"]}]})
    mm = measure(face, defs, mesh=mesh)[0].value
    in_cm = measure(face.in_units("cm"), defs, mesh=mesh.in_units("cm"))[0]
    assert in_cm.value == pytest.approx(mm, rel=1e-4) and in_cm.units == "mm"
    moved = Landmarks(face.labels, face.points + [0.0, 0.0, 40.0], units=face.units)
    other = measure(moved, defs, mesh=mesh)[0]
    assert other.value is None and "from the scan's surface" in other.note
    dots = measure(face, defs, mesh=Mesh(mesh.vertices))[0]  # a point cloud has no surface to follow
    assert dots.value is None and "triangles" in dots.note


def test_an_arc_between_pieces_that_do_not_touch():
    left = icosphere(30.0, 2)
    right = Mesh(left.vertices + [100.0, 0, 0], left.triangles)
    both = Mesh(np.concatenate([left.vertices, right.vertices]),
                np.concatenate([left.triangles, right.triangles + len(left.vertices)]))
    arc = SurfaceGraph(both).arcs([np.array([[30.0, 0, 0], [70.0, 0, 0]])])[0]
    assert arc.length is None and "does not connect" in arc.note


def test_straightening_never_lengthens_a_path(sample):
    """Pulled taut, a path only gets shorter; where a midpoint would land on another sheet of the
    surface (inside a nostril) and make it longer, the cautious second pass or the edge path is kept."""
    mesh, face = sample
    graph = SurfaceGraph(mesh)
    d = face.as_dict()
    pairs = [("t_R", "sn"), ("sn", "t_L"), ("al_R", "al_L"), ("ch_R", "ch_L"), ("sbal_R", "sbal_L"), ("c", "ls"),
             ("en_R", "ex_L"), ("go_R", "pg"), ("sa_R", "sba_R"), ("prn", "me")]
    ends = [np.array([d[a], d[b]]) for a, b in pairs]
    raw = graph.arcs(ends, straighten=False)
    taut = graph.arcs(ends)
    for (a, b), r, t in zip(pairs, raw, taut):
        assert t.length <= r.length + 1e-6, (a, b)
        assert t.length >= np.linalg.norm(d[a] - d[b]) - 1e-6, (a, b)  # never shorter than the straight line
