"""Putting points onto a scan: the closest surface point is exact (against every triangle) on
fine and coarse meshes, and the nearest vertex is a vertex."""
import numpy as np
import pytest
from scipy.spatial import cKDTree

from palnet.datatypes import Mesh
from palnet.snap import closest_point_on_triangles, closest_points_on_surface, snap_to_surface


def _wavy_sheet(step: float, seed: int = 0) -> Mesh:
    """A bumpy 80 x 60 mm sheet triangulated at ``step`` mm, its grid jittered."""
    rng = np.random.default_rng(seed)
    xs, ys = np.arange(-40.0, 40.0 + 1e-9, step), np.arange(-30.0, 30.0 + 1e-9, step)
    gx, gy = np.meshgrid(xs, ys)
    gx = gx + rng.uniform(-0.2, 0.2, gx.shape) * step
    gy = gy + rng.uniform(-0.2, 0.2, gy.shape) * step
    z = 6.0 * np.sin(gx / 9.0) * np.cos(gy / 7.0)
    v = np.column_stack([gx.ravel(), gy.ravel(), z.ravel()])
    nx = len(xs)
    i, j = np.meshgrid(np.arange(len(ys) - 1), np.arange(nx - 1), indexing="ij")
    a = (i * nx + j).ravel()
    t = np.concatenate([np.column_stack([a, a + 1, a + nx]), np.column_stack([a + 1, a + nx + 1, a + nx])])
    return Mesh(v, t.astype(np.int64))


def _brute_force(mesh: Mesh, pts: np.ndarray) -> np.ndarray:
    v, t = mesh.vertices, mesh.triangles
    q = closest_point_on_triangles(pts[:, None], v[t[:, 0]][None], v[t[:, 1]][None], v[t[:, 2]][None])
    return np.linalg.norm(q - pts[:, None], axis=2).min(axis=1)


@pytest.mark.parametrize("step", [1.0, 4.5, 12.0])
def test_closest_surface_points_are_the_closest_of_all_triangles(step):
    mesh = _wavy_sheet(step)
    rng = np.random.default_rng(1)
    pts = np.column_stack([rng.uniform(-35, 35, 50), rng.uniform(-25, 25, 50), rng.uniform(-9, 9, 50)])
    q, tri, d = closest_points_on_surface(mesh, pts)
    np.testing.assert_allclose(d, _brute_force(mesh, pts), atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(q - pts, axis=1), d, atol=1e-9)
    assert (tri >= 0).all()
    # the same with the caller's search tree, and through snap_to_surface
    again = closest_points_on_surface(mesh, pts, tree=cKDTree(mesh.vertices))
    np.testing.assert_array_equal(again[0], q)
    np.testing.assert_array_equal(snap_to_surface(mesh, pts, "surface"), q)


def test_on_a_coarse_mesh_the_surface_point_moves_a_point_less_than_the_nearest_vertex():
    mesh = _wavy_sheet(8.0)
    rng = np.random.default_rng(2)
    pts = np.column_stack([rng.uniform(-30, 30, 40), rng.uniform(-20, 20, 40), np.zeros(40)])
    on = closest_points_on_surface(mesh, pts)[0]  # points on the surface, mostly inside triangles
    vert = snap_to_surface(mesh, on, "nearest")
    surf = snap_to_surface(mesh, on, "surface")
    assert np.linalg.norm(surf - on, axis=1).max() < 1e-9  # a point on the surface stays where it is
    assert np.isin(vert, mesh.vertices).all(axis=1).all()  # the nearest vertex is a vertex
    assert np.linalg.norm(vert - on, axis=1).mean() > 2.0  # and on 8 mm triangles lies mm away


def test_a_point_cloud_snaps_onto_its_points():
    """A scan without triangles (a point cloud) has no surface between its points: the closest
    surface point is then the nearest point."""
    sheet = _wavy_sheet(3.0)
    cloud = Mesh(sheet.vertices, np.zeros((0, 3), np.int64))
    pts = sheet.vertices[[5, 50, 300]] + [0.4, -0.3, 0.8]
    np.testing.assert_array_equal(snap_to_surface(cloud, pts, "surface"), sheet.vertices[[5, 50, 300]])
