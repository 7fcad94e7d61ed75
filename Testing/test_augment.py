"""Training-time augmentation: altered copies of annotated scans, and splits that keep a
scan's copies on its side of training/validation."""
import numpy as np
import pytest
from scipy.spatial import cKDTree

from palnet.augment import COARSEST, augment_scan, coarsen
from palnet.dataset import TrainingScan
from palnet.snap import closest_points_on_surface


@pytest.fixture(scope="module")
def scan(ict_path):
    from palnet.synth import generate_scan, load_ict
    mesh, lms, _ = generate_scan(3, load_ict(ict_path))
    return mesh, lms.points


def test_coarsen_keeps_a_manifold_surface(scan):
    from palnet.geometry import edges_and_border
    mesh, _ = scan
    c = coarsen(mesh, 0.4)
    assert 0.5 * mesh.n_vertices < c.n_vertices < 0.7 * mesh.n_vertices
    t = c.triangles
    half_edges = np.sort(np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]]) @ [c.n_vertices, 1])
    assert (np.diff(half_edges) > 0).all()  # every directed edge once: no folds, no duplicate triangles
    assert edges_and_border(t, c.n_vertices)[1].sum() <= edges_and_border(mesh.triangles, mesh.n_vertices)[1].sum()
    assert np.percentile(cKDTree(mesh.vertices).query(c.vertices)[0], 95) < 1.0  # on the same surface
    assert coarsen(mesh, 0.99).n_vertices >= 0.95 * COARSEST  # never coarser than a face needs


@pytest.mark.parametrize("copy", range(6))
def test_copies_change_the_scan_but_keep_the_landmarks_surface(scan, copy):
    mesh, points = scan
    settings = {"any_pose": False, "spikes": 0}  # in place, so distances can be read directly
    a, pa = augment_scan(mesh, points, np.random.default_rng([7, copy]), settings)
    b, pb = augment_scan(mesh, points, np.random.default_rng([7, copy]), settings)
    np.testing.assert_array_equal(a.vertices, b.vertices)  # a pure function of the random stream
    np.testing.assert_array_equal(pa, points)
    assert a.n_vertices != mesh.n_vertices or not np.array_equal(a.vertices, mesh.vertices)
    assert a.triangles.max() < a.n_vertices
    # no cut or hole reaches the landmarks: the surface around each one is still there
    near = mesh.vertices[cKDTree(points).query(mesh.vertices)[0] < 8.0]  # within the 10 mm margin
    on_copy = closest_points_on_surface(a, near)[0]
    assert np.linalg.norm(on_copy - near, axis=1).max() < 1.5  # moved by decimation and noise only


def test_any_pose_moves_landmarks_with_the_scan(scan):
    mesh, points = scan
    a, pa = augment_scan(mesh, points, np.random.default_rng(1), {"crop": 0, "holes": 0, "noise_mm": 0,
                                                                  "spikes": 0, "coarsen": 0})
    # a rigid motion: distances between landmarks and to the surface are kept
    np.testing.assert_allclose(np.linalg.norm(pa[0] - pa[1:], axis=1), np.linalg.norm(points[0] - points[1:], axis=1))
    np.testing.assert_allclose(cKDTree(a.vertices).query(pa)[0], cKDTree(mesh.vertices).query(points)[0], atol=1e-6)
    assert np.abs(pa - points).max() > 1.0


def test_copies_never_straddle_training_and_validation():
    from palnet.train import scan_groups, split_groups
    scans = []
    for i in range(5):
        scans.append(TrainingScan("s{}".format(i), np.zeros((1, 3), np.float32), np.zeros((2, 3)), 1.0))
        for k in (1, 2):
            scans.append(TrainingScan("s{}~aug{}".format(i, k), np.zeros((1, 3), np.float32), np.zeros((2, 3)), 1.0,
                                      "s{}".format(i), k))
    groups = scan_groups(scans)
    assert len(groups) == 5 and all(len(g) == 3 and scans[g[0]].copy == 0 for g in groups)
    tr, val = split_groups(scans, groups, [1, 3])
    assert [s.scan_id for s in val] == ["s1", "s3"]  # validated on the scans themselves only
    assert len(tr) == 9 and not {s.group for s in tr} & {"s1", "s3"}
