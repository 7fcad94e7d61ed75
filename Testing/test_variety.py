"""Faces beyond one shape space: warps keep the truth exact, move what they say, fold nothing;
clinical expressions, face-only captures, coarse meshes and hair; the held-out family."""
import numpy as np
import pytest

from palnet import PalnetError
from palnet.snap import closest_points_on_surface


@pytest.fixture(scope="module")
def ict(ict_path):
    from palnet.synth import load_ict
    return load_ict(ict_path)


def _head(ict, seed=3):
    from palnet.ict_landmarks import LABELS, ict_landmark_positions
    verts = ict.neutral + np.tensordot(np.random.default_rng(seed).normal(0, 1, 100).astype(np.float32),
                                       ict.identity, 1)
    return np.asarray(verts, np.float64), list(LABELS), ict_landmark_positions(verts, LABELS)


def _width(labels, lm, name):
    return float(np.linalg.norm(lm[labels.index(name + "_R")] - lm[labels.index(name + "_L")]))


@pytest.mark.parametrize("family", ["mouth", "nose", "eyes", "chin", "forehead", "ears", "proportions"])
def test_each_family_bends_the_head_smoothly_without_folds(ict, family):
    from palnet.variety import family_warp
    verts, labels, lm = _head(ict)
    warp = family_warp(family, labels, lm, np.random.default_rng(7))
    moved = warp(verts)
    shift = np.linalg.norm(moved - verts, axis=1)
    assert shift.max() > 1.0  # it does something
    # no fold: the map's Jacobian (finite differences along each axis) keeps a positive determinant
    h = 0.05
    jac = np.stack([(warp(verts + h * e) - warp(verts - h * e)) / (2 * h) for e in np.eye(3)], axis=2)
    assert np.linalg.det(jac).min() > 0.2


def test_mouth_family_widens_and_narrows_mouths_beyond_the_identity_modes(ict):
    from palnet.ict_landmarks import ict_landmark_positions
    from palnet.variety import family_warp
    verts, labels, lm = _head(ict)
    ratios = []
    for seed in range(30):
        moved = family_warp("mouth", labels, lm, np.random.default_rng(seed))(verts)
        ratios.append(_width(labels, ict_landmark_positions(moved, labels), "ch") / _width(labels, lm, "ch"))
    # 0.84-1.31 on the neutral head (identity modes at 1.6 sigma: 0.70-1.23 around their mean, but
    # tied to the rest of the face); the measured real mouth was 33 % wider than predicted
    assert min(ratios) < 0.9 and max(ratios) > 1.25


def test_warped_scans_keep_exact_landmarks_on_the_surface(ict):
    from palnet.synth import generate_scan
    from palnet.variety import TRAINING_FAMILIES
    for seed in (0, 3, 6):
        scan, lms, info = generate_scan(seed, ict, variety=TRAINING_FAMILIES)
        assert set(info["variety"]["families"]) <= set(TRAINING_FAMILIES)
        d = np.linalg.norm(closest_points_on_surface(scan, lms.points)[0] - lms.points, axis=1)
        assert d.max() < 1e-6


def test_variety_is_a_pure_function_of_the_seed_and_leaves_the_default_alone(ict):
    from palnet.synth import generate_scan
    a, la, ia = generate_scan(1005, ict, variety=("mouth",))
    b, lb, ib = generate_scan(1005, ict, variety=("mouth",))
    assert np.array_equal(a.vertices, b.vertices) and np.array_equal(la.points, lb.points)
    plain, lp, info = generate_scan(1005, ict)
    assert "variety" not in info and ia["variety"]["families"] == ["mouth"]
    assert not np.allclose(lp.points, la.points)


def test_the_held_out_family_is_never_a_training_family():
    from palnet.variety import FAMILIES, HELD_OUT_FAMILY, TRAINING_FAMILIES
    assert HELD_OUT_FAMILY in FAMILIES and HELD_OUT_FAMILY not in TRAINING_FAMILIES
    assert set(TRAINING_FAMILIES) | {HELD_OUT_FAMILY} == set(FAMILIES)


def test_scanner_habits_coarse_mesh_and_closed_eyes(ict):
    """A coarse capture has a median edge of 3-5 mm; closed lids hide the eyeballs."""
    from palnet.synth import generate_scan
    from palnet.variety import TRAINING_FAMILIES
    seen_coarse = seen_closed = False
    for seed in range(40):
        scan, lms, info = generate_scan(seed, ict, variety=TRAINING_FAMILIES)
        v = info["variety"]
        if v["coarse_edge_mm"] and not seen_coarse:
            t = scan.triangles
            edges = np.linalg.norm(scan.vertices[t[:, [1, 2, 0]]] - scan.vertices[t], axis=2)
            assert 2.0 < np.median(edges) < 6.0
            seen_coarse = True
        if v["expression"].get("eyeBlink_L", 0) > 0.6:
            seen_closed = True
        if seen_coarse and seen_closed:
            break
    assert seen_coarse and seen_closed


def test_hair_covers_the_scalp_and_spares_the_face(ict):
    from palnet.variety import add_hair
    from palnet.geometry import vertex_normals
    verts, labels, lm = _head(ict)
    nrm = vertex_normals(verts, ict.triangles)
    haired = add_hair(verts, nrm, labels, lm, 10.0, np.random.default_rng(0))
    moved = np.linalg.norm(haired - verts, axis=1)
    face = [labels.index(k) for k in ("n", "prn", "sto", "pg", "en_R", "ch_L", "t_R", "sa_L")]
    near_face = np.linalg.norm(verts[:, None] - lm[face][None], axis=2).min(axis=1) < 5.0
    assert moved[near_face].max() < 1e-9
    top = verts[:, 1] > lm[labels.index("tr"), 1] + 30.0
    assert moved[top].mean() > 5.0


def test_unknown_family_is_one_clear_line(ict):
    from palnet.synth import generate_scan
    with pytest.raises(PalnetError, match="unknown warp family lips"):
        generate_scan(1, ict, variety=("lips",))


def test_synth_command_takes_variety_and_the_front_crop(tmp_path, ict_path):
    """`palnet synth --variety ... --crop front`: a face-only capture whose ear points are written
    missing (Slicer's positionStatus), the rest exact on the surface."""
    import json

    from palnet.cli import main
    from palnet.landmark_io import read_landmarks
    from palnet.mesh_io import read_mesh
    out = tmp_path / "v"
    assert main(["synth", "--n", "1", "--seed", "1002", "-o", str(out), "--ict", str(ict_path), "--jobs", "1",
                 "--variety", "mouth,nose", "--crop", "front"]) == 0
    meta = json.loads((out / "synth_01002" / "meta.json").read_text())
    assert set(meta["variety"]["families"]) <= {"mouth", "nose"} and meta["crop"] == "front"
    lms = read_landmarks(out / "synth_01002" / "landmarks.mrk.json")
    gone = [lab for lab, p in zip(lms.labels, lms.points) if not np.isfinite(p).all()]
    assert {"t_R", "t_L", "obs_R", "obs_L"} <= set(gone) and "n" not in gone
    scan = read_mesh(out / "synth_01002" / "scan.ply")
    known = np.isfinite(lms.points).all(axis=1)
    d = np.linalg.norm(closest_points_on_surface(scan, lms.points[known])[0] - lms.points[known], axis=1)
    assert d.max() < 1e-4
    with pytest.raises(SystemExit):
        main(["synth", "--n", "1", "-o", str(out), "--crop", "sideways"])
