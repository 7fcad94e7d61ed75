"""The baselines: Coherent Point Drift recovers known deformations; both baselines place
50 landmarks on a scan's surface, in its frame and units, with any model."""
import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from palnet import PalnetError
from palnet.baselines import (RegistrationSettings, affine_coherent_point_drift, coherent_point_drift,
                              initial_approximation_baseline, low_rank_eigen, subsample,
                              template_registration_baseline)
from palnet.engine import NetworkConfig, expected_weight_shapes
from palnet.modelfile import Model
from palnet.protocol import default_protocol
from palnet.resources import face_template_path, sample_landmarks_path, sample_scan_path
from palnet.snap import closest_points_on_surface
from palnet.datatypes import Mesh


# ---------------------------------------------------------------------------
# Coherent Point Drift on a synthetic bumpy sheet
# ---------------------------------------------------------------------------

# Gaussian bumps of a few mm (u, v, height, width): features that stop points sliding along the sheet.
BUMPS = np.array([[-25, 20, 10, 9], [15, 25, -8, 8], [25, -20, 12, 10], [-20, -25, 9, 7], [0, 0, 7, 12]], float)


def sheet(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A 90 x 90 mm bumpy sheet, points (..., 3) at parameters (u, v)."""
    z = 2.0 * np.sin(u / 15.0) * np.cos(v / 19.0)
    for bu, bv, height, width in BUMPS:
        z = z + height * np.exp(-((u - bu) ** 2 + (v - bv) ** 2) / (2 * width ** 2))
    return np.stack([u, v, z], axis=-1)


def deform(p: np.ndarray) -> np.ndarray:
    """A smooth non-rigid motion of about 5 mm, mostly along the sheet."""
    x, y = p[:, 0], p[:, 1]
    return p + np.stack([5.0 * np.sin(y / 40.0 + 0.5), 4.0 * np.cos(x / 35.0), 3.0 * np.sin((x + y) / 50.0)], axis=1)


def grid(spacing: float, jitter: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u, v = np.meshgrid(np.arange(-45, 45.01, spacing), np.arange(-45, 45.01, spacing))
    u = u.ravel() + rng.uniform(-jitter, jitter, u.size)
    v = v.ravel() + rng.uniform(-jitter, jitter, v.size)
    inside = (np.abs(u) <= 45) & (np.abs(v) <= 45)
    return sheet(u[inside], v[inside])


@pytest.fixture(scope="module")
def sheet_problem():
    source = grid(5.0, 0.0, 0)                      # the template: a coarse regular grid
    target = deform(grid(3.5, 1.5, 1))              # the "scan": denser, jittered, deformed
    rng = np.random.default_rng(2)
    mu, mv = rng.uniform(-30, 30, (2, 12))
    markers = sheet(mu, mv)                         # landmarks on the template surface, off its grid
    return source, target, markers, deform(markers)


# Smooth, stiff settings for a deformation this smooth; the sigma^2 floor is about the
# sampling noise. The markers then land within a third of the template's 5 mm spacing:
# motion along a smooth surface is only seen through its bumps.
SHEET_FIT = dict(beta=60.0, lam=0.1, w=0.1, sigma2=50.0, min_sigma2=1.0, max_iterations=150)


def _marker_error(fit, markers, truth):
    return np.linalg.norm(fit.transform(markers) - truth, axis=1)


@pytest.fixture(scope="module")
def exact_fit(sheet_problem):
    source, target, _, _ = sheet_problem
    return coherent_point_drift(source, target, **SHEET_FIT)


def test_exact_cpd_recovers_a_smooth_deformation(sheet_problem, exact_fit):
    source, target, markers, truth = sheet_problem
    before = np.linalg.norm(markers - truth, axis=1)
    err = _marker_error(exact_fit, markers, truth)
    assert before.mean() > 4.0
    assert err.mean() < 1.3 and err.max() < 2.5, (err.mean(), err.max())
    # The moved template lies on the deformed surface.
    assert cKDTree(target).query(exact_fit.moved)[0].mean() < 1.5
    # transform() of the template's own points is where the fit moved them.
    assert np.allclose(exact_fit.transform(source), exact_fit.moved, atol=1e-6)


def test_fast_cpd_matches_the_exact_one(sheet_problem, exact_fit):
    """Low-rank kernel and truncated posteriors (what the baseline uses) land in the same place."""
    source, target, markers, truth = sheet_problem
    fast = coherent_point_drift(source, target, rank=60, neighbours=32, **SHEET_FIT)
    assert np.abs(fast.transform(markers) - exact_fit.transform(markers)).max() < 0.1


def test_cpd_ignores_outliers(sheet_problem):
    source, target, markers, truth = sheet_problem
    rng = np.random.default_rng(5)
    clutter = rng.uniform([-60, -60, -40], [60, 60, 40], size=(len(target) // 5, 3))
    fit = coherent_point_drift(source, np.vstack([target, clutter]), rank=60, neighbours=32,
                               **dict(SHEET_FIT, w=0.3))
    err = _marker_error(fit, markers, truth)
    assert err.mean() < 1.5 and err.max() < 3.0, (err.mean(), err.max())


def test_affine_cpd_recovers_an_affine_map():
    """On a face (the shipped template points): a subset registered to all of them, moved and noisy."""
    if not face_template_path().exists():
        pytest.skip("no face template in Resources")
    with np.load(face_template_path(), allow_pickle=False) as d:
        face = d["points"].astype(np.float64)
    rng = np.random.default_rng(0)
    b_true = Rotation.from_euler("xyz", [4, -3, 6], degrees=True).as_matrix() @ np.diag([1.08, 0.95, 1.02])
    t_true = np.array([3.0, -4.0, 2.0])
    source = face[rng.permutation(len(face))[:700]]
    target = (face + rng.normal(0.0, 0.5, face.shape)) @ b_true.T + t_true
    for neighbours in (None, 48):
        b, t, _ = affine_coherent_point_drift(source, target, w=0.0, sigma2=50.0, neighbours=neighbours,
                                              max_iterations=150)
        assert np.abs(b - b_true).max() < 0.015, (neighbours, b)
        miss = np.linalg.norm((source @ b.T + t) - (source @ b_true.T + t_true), axis=1)
        assert miss.mean() < 1.0 and miss.max() < 2.5, (neighbours, miss.mean(), miss.max())


def test_low_rank_eigen_finds_the_top_of_the_spectrum(sheet_problem):
    source = sheet_problem[0]
    g = np.exp(-((source[:, None] - source[None]) ** 2).sum(-1) / (2 * 40.0 ** 2))
    values, vectors = low_rank_eigen(g, 30)
    exact = np.linalg.eigvalsh(g)[::-1]
    assert np.allclose(values, exact[:30], rtol=1e-3, atol=1e-6 * exact[0])
    assert np.allclose(vectors.T @ vectors, np.eye(30), atol=1e-8)
    # As good as the best rank-30 approximation: its error (2-norm) is the 31st eigenvalue.
    approx = vectors @ np.diag(values) @ vectors.T
    assert np.linalg.norm(approx - g, 2) <= 1.05 * exact[30] + 1e-9


def test_cpd_refuses_bad_input():
    pts = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(PalnetError, match="outlier weight"):
        coherent_point_drift(pts, pts, w=1.0)
    with pytest.raises(PalnetError, match="points on both sides"):
        coherent_point_drift(np.zeros((0, 3)), pts)
    with pytest.raises(PalnetError, match="4 points"):
        affine_coherent_point_drift(pts[:3], pts)


def test_subsample_is_even_and_near_the_count():
    pts = grid(1.0, 0.3, 4)
    few = subsample(pts, 800)
    assert 600 <= len(few) <= 800
    # spread over the whole sheet, not a corner of it
    assert np.ptp(few[:, 0]) > 85 and np.ptp(few[:, 1]) > 85
    assert len(subsample(pts[:100], 800)) == 100


def test_subsample_does_not_hang_on_rounding_errors_or_the_order_of_the_points():
    """Regularly laid samples (a coarse triangle's) tie for their cell's middle; a pick among them,
    or a draw by position in the list, let a 1e-9 mm change swap a twentieth of the targets and
    move a real scan's registration by up to 7 mm."""
    # An exact lattice (off the grid's planes, as a scan's samples are): each cell's points tie.
    pts = grid(1.0, 0.0, 0) + np.array([0.3183, 0.2718, 0.0])
    few = subsample(pts, 800)
    moved = subsample(pts + np.random.default_rng(1).normal(scale=1e-9, size=pts.shape), 800)
    assert few.shape == moved.shape and np.abs(few - moved).max() < 1e-6
    shuffled = subsample(pts[np.random.default_rng(2).permutation(len(pts))], 800)
    assert np.abs(np.sort(shuffled, axis=0) - np.sort(few, axis=0)).max() < 1e-9
    many = grid(0.5, 0.1, 3)  # more cells than asked for: the trim keeps cells, not list positions
    kept = subsample(many, 700)
    assert len(kept) == 700
    again = subsample(many + np.random.default_rng(4).normal(scale=1e-9, size=many.shape), 700)
    assert np.abs(kept - again).max() < 1e-6
    assert np.ptp(kept[:, 0]) > 85 and np.ptp(kept[:, 1]) > 85


# ---------------------------------------------------------------------------
# The baselines on the shipped sample scan, with a tiny random-weight model
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample():
    from palnet.mesh_io import read_mesh
    from palnet.landmark_io import read_landmarks
    if not sample_scan_path().exists() or not face_template_path().exists():
        pytest.skip("the sample scan or the face template is not in Resources")
    return read_mesh(sample_scan_path()), read_landmarks(sample_landmarks_path())


@pytest.fixture(scope="module")
def tiny_model(sample):
    """A model as palnet.train writes it, with a tiny network of random weights.

    Its mean landmarks are the sample's own, moved into the canonical frame and
    disturbed by 3 mm, so the baselines have something to correct.
    """
    from palnet.align import align_scan
    mesh, truth = sample
    protocol = default_protocol()
    with np.load(face_template_path(), allow_pickle=False) as d:
        template = d["points"].astype(np.float64)
    canonical = align_scan(mesh.vertices, template).to_canonical(truth.select(protocol.labels).points)
    mean = canonical + np.random.default_rng(0).normal(0.0, 3.0 / np.sqrt(3), canonical.shape)
    config = NetworkConfig(n_landmarks=len(protocol.labels), patch_size=25, widths=(4,), pools=(5,), fc=8)
    rng = np.random.default_rng(1)
    weights = {k: (0.01 * rng.normal(size=s)).astype(np.float32) for k, s in expected_weight_shapes(config).items()}
    metadata = {"protocol": dict(protocol.to_dict(), labels=protocol.labels), "units": "mm",
                "mean_landmarks": mean.tolist(), "template": np.round(template, 4).tolist(),
                "patch": {"spacing_mm": 2.0, "scale_mm": 20.0}, "refine_steps": 1}
    return Model(weights, config, metadata)


def _on_surface(mesh: Mesh, points: np.ndarray) -> np.ndarray:
    return closest_points_on_surface(mesh, points)[2]


def _to_vertex(mesh: Mesh, points: np.ndarray) -> np.ndarray:
    return cKDTree(mesh.vertices).query(points)[0]


def test_initial_approximation_baseline(sample, tiny_model):
    mesh, truth = sample
    lms = initial_approximation_baseline(mesh, tiny_model)
    assert lms.labels == default_protocol().labels and lms.units == "mm"
    assert lms.points.shape == (50, 3) and np.isfinite(lms.points).all()
    assert _on_surface(mesh, lms.points).max() < 1e-9  # on the surface, as predict snaps
    on_vertices = initial_approximation_baseline(mesh, tiny_model, snap="nearest")
    assert _to_vertex(mesh, on_vertices.points).max() < 1e-9
    err = np.linalg.norm(lms.points - truth.select(lms.labels).points, axis=1)
    assert err.mean() < 6.0, err.mean()
    # from a prediction's pose: the same landmarks without aligning the scan again
    from palnet.pipeline import model_arrays, template_modes, to_canonical_frame
    template = model_arrays(tiny_model)[0]
    c = to_canonical_frame(mesh, template, "auto", template_modes(template))
    again = initial_approximation_baseline(mesh, tiny_model, c.units, c.alignment)
    np.testing.assert_array_equal(again.points, lms.points)


def test_template_registration_baseline_in_any_units(sample, tiny_model):
    mesh, truth = sample
    fast = RegistrationSettings(iterations=15, affine_iterations=10, target_points=1500)
    lms = template_registration_baseline(mesh, tiny_model, settings=fast)
    assert lms.labels == default_protocol().labels and lms.units == "mm"
    assert lms.points.shape == (50, 3) and np.isfinite(lms.points).all()
    assert _on_surface(mesh, lms.points).max() < 1e-9
    err = np.linalg.norm(lms.points - truth.select(lms.labels).points, axis=1)
    assert err.mean() < 6.0, err.mean()

    # The same scan in centimetres: found to be cm, answered in cm, at the same places.
    in_cm = Mesh(mesh.vertices * 0.1, mesh.triangles, "cm")
    cm = template_registration_baseline(in_cm, tiny_model, settings=fast)
    assert cm.units == "cm"
    assert _on_surface(in_cm, cm.points).max() < 1e-9
    assert np.median(np.linalg.norm(cm.points * 10.0 - lms.points, axis=1)) < 1.0


def test_template_registration_with_a_mean_face_and_without_snapping(sample, tiny_model):
    """A denser mean-face surface (here: the face template itself) and the affine stage run;
    ``snap="none"`` leaves the points off the vertices but near the surface."""
    mesh, _ = sample
    with np.load(face_template_path(), allow_pickle=False) as d:
        face = d["points"].astype(np.float64)
    fast = RegistrationSettings(iterations=10, affine_iterations=10, target_points=1200)
    lms = template_registration_baseline(mesh, tiny_model, mean_face=face, settings=fast, snap="none")
    assert lms.points.shape == (50, 3) and np.isfinite(lms.points).all()
    assert np.median(_on_surface(mesh, lms.points)) < 3.0


def test_ict_mean_face_covers_every_landmark_ears_included(ict_path):
    from palnet.baselines import ict_mean_face
    from palnet.ict_landmarks import LABELS, ict_landmark_positions
    from palnet.synth import load_ict
    ict = load_ict(ict_path)
    mean = ict_landmark_positions(ict.neutral, LABELS)
    face = ict_mean_face(mean, ict, margin=20.0, spacing=2.0)
    dist_to_landmarks = cKDTree(mean).query(face)[0]
    assert dist_to_landmarks.max() <= 20.0 + 1e-9
    # every landmark (the ears' too) has surface right around it, unlike the central-face template
    assert cKDTree(face).query(mean)[0].max() < 3.0
    if face_template_path().exists():
        with np.load(face_template_path(), allow_pickle=False) as d:
            template = d["points"].astype(np.float64)
        ears = [i for i, lab in enumerate(LABELS) if lab.split("_")[0] in ("sa", "sba", "pa", "obs")]
        assert cKDTree(template).query(mean[ears])[0].min() > cKDTree(face).query(mean[ears])[0].max()
