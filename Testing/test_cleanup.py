"""Scanner spikes and loose fragments are found and left out of a working copy; a clean
surface keeps its vertices."""
import numpy as np
import pytest

from palnet.cleanup import _neighbour_centres, find_fragments, find_spikes, remove_spikes
from palnet.geometry import edges_and_border
from palnet.mesh_io import read_mesh
from palnet.resources import sample_scan_path
from palnet.datatypes import Mesh


@pytest.fixture(scope="module")
def sample():
    return read_mesh(sample_scan_path())


def _spiked(mesh, fraction, seed=0):
    """Spikes on vertices inside the surface (border vertices are not judged, see cleanup)."""
    from palnet.geometry import vertex_normals
    rng = np.random.default_rng(seed)
    inside = np.flatnonzero(~_neighbour_centres(mesh)[3])
    pick = rng.choice(inside, int(fraction * mesh.n_vertices), replace=False)
    v = mesh.vertices.copy()
    v[pick] += vertex_normals(mesh.vertices, mesh.triangles)[pick] * rng.uniform(4, 30, (len(pick), 1))
    return Mesh(v, mesh.triangles, mesh.units), pick


def test_spikes_are_found(sample):
    spiky, pick = _spiked(sample, 0.02)
    found = find_spikes(spiky)
    assert np.isin(pick, np.flatnonzero(found)).mean() > 0.9  # measured 0.95; misses: neighbouring spikes, short ones
    assert found.sum() < 1.1 * len(pick)  # hardly anything else


def test_a_clean_scan_keeps_its_vertices(sample):
    assert find_spikes(sample).sum() == 0
    border = _neighbour_centres(sample)[3]
    assert 0 < border.sum() < 0.2 * sample.n_vertices  # the sample has holes and cut edges


def test_remove_spikes_returns_a_consistent_copy(sample):
    spiky, pick = _spiked(sample, 0.01, seed=1)
    before = spiky.vertices.copy()
    clean, n = remove_spikes(spiky)
    assert n >= 0.9 * len(pick) and clean.n_vertices == spiky.n_vertices - n
    assert clean.triangles.max() < clean.n_vertices and clean.n_triangles < spiky.n_triangles
    assert np.array_equal(spiky.vertices, before)  # the user's mesh is not touched
    # every kept vertex is one of the originals
    kept = np.ones(spiky.n_vertices, bool)
    kept[find_spikes(spiky)] = False
    np.testing.assert_array_equal(clean.vertices, spiky.vertices[kept])
    assert remove_spikes(sample)[0].n_vertices >= sample.n_vertices - 0.001 * sample.n_vertices


def test_point_cloud_spikes(sample):
    spiky, pick = _spiked(sample, 0.01, seed=2)
    found = find_spikes(Mesh(spiky.vertices))
    assert np.isin(pick, np.flatnonzero(found)).mean() > 0.3  # fewer than with triangles, but the worst ones
    assert found.sum() < 2 * len(pick)


def test_tiny_inputs_have_no_spikes():
    assert not find_spikes(Mesh(np.random.default_rng(0).normal(size=(5, 3)))).any()


def test_loose_fragments_are_found_and_touching_pieces_kept(sample):
    from scipy.spatial import ConvexHull
    v, t = sample.vertices, sample.triangles
    ball = np.random.default_rng(1).normal(size=(100, 3))
    ball = ball / np.linalg.norm(ball, axis=1, keepdims=True) * 5.0  # a closed 100-vertex piece
    ball_t = ConvexHull(ball).simplices
    far = ball + v[np.argmin(v[:, 2])] + [0.0, 0.0, -60.0]  # well apart from the face
    near = ball + v[0] + [0.0, 0.0, 7.0]  # close to it (within 15 mm), as the front of an eye is
    mesh = Mesh(np.vstack([v, far, near]), np.vstack([t, ball_t + len(v), ball_t + len(v) + 100]), "mm")
    found = find_fragments(mesh)
    assert found[len(v):len(v) + 100].all() and not found[:len(v)].any() and not found[len(v) + 100:].any()
    edges = edges_and_border(mesh.triangles, mesh.n_vertices)  # given once for both searches: the same answers
    assert np.array_equal(find_fragments(mesh, edges=edges), found)
    assert np.array_equal(find_spikes(mesh, edges=edges), find_spikes(mesh))
    assert not find_fragments(sample).any()
    assert not find_fragments(Mesh(mesh.vertices, np.zeros((0, 3), np.int64), "mm")).any()  # point cloud
