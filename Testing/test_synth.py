"""Synthetic scans: exact ground truth on the surface, variety, determinism, files and messages."""
import json

import numpy as np
import pytest
from scipy.spatial import cKDTree

from palnet import PalnetError
from palnet.cli import main
from palnet.mesh_io import read_mesh
from palnet.landmark_io import read_landmarks
from palnet.snap import closest_points_on_surface


@pytest.fixture(scope="module")
def ict(ict_path):
    from palnet.synth import load_ict
    return load_ict(ict_path)


@pytest.fixture(scope="module")
def five(tmp_path_factory, ict_path):
    out = tmp_path_factory.mktemp("synth")
    assert main(["synth", "--n", "5", "--seed", "1000", "-o", str(out), "--ict", str(ict_path), "--jobs", "2"]) == 0
    return out


def test_five_scans_differ_and_landmarks_lie_on_the_surface(five):
    folders = sorted(p for p in five.iterdir() if p.is_dir())
    assert [p.name for p in folders] == ["synth_{:05d}".format(s) for s in range(1000, 1005)]
    sizes, centroids = set(), []
    for folder in folders:
        mesh = read_mesh(folder / "scan.ply")
        lms = read_landmarks(folder / "landmarks.mrk.json")
        meta = json.loads((folder / "meta.json").read_text())
        assert len(lms) == 50 and meta["seed"] == int(folder.name.split("_")[1])
        # PLY stores float32: the surface distance is within float precision of 0
        dist = closest_points_on_surface(mesh, lms.points)[2]
        assert dist.max() <= 0.05, (folder.name, dist.max())
        sizes.add(mesh.n_vertices)
        centroids.append(mesh.vertices.mean(axis=0))
        assert 8_000 <= mesh.n_vertices <= 220_000
        for key in ("identity_weights", "expression", "pose_matrix_mm", "units", "holes", "noise_sigma_mm"):
            assert key in meta
    assert len(sizes) == 5  # five different triangulations
    assert np.min(np.linalg.norm(np.diff(centroids, axis=0), axis=1)) > 1.0  # different poses


def test_scan_is_a_pure_function_of_its_seed(ict):
    from palnet.synth import generate_scan
    a, la, ma = generate_scan(1234, ict)
    b, lb, mb = generate_scan(1234, ict)
    c, _, _ = generate_scan(1235, ict)
    assert np.array_equal(a.vertices, b.vertices) and np.array_equal(a.triangles, b.triangles)
    assert np.array_equal(la.points, lb.points) and ma == mb
    assert a.n_vertices != c.n_vertices or not np.allclose(a.vertices[:100], c.vertices[:100])


def test_no_scan_vertex_sits_on_a_template_vertex(ict):
    from palnet.synth import generate_scan
    scan, lms, meta = generate_scan(1001, ict, pose="canonical")
    m = np.asarray(meta["pose_matrix_mm"])
    head_frame = (scan.vertices - m[:3, 3]) @ m[:3, :3]  # back into the ICT frame
    w = np.asarray(meta["identity_weights"], dtype=np.float32)
    e = np.zeros(ict.expression.shape[0], np.float32)
    for name, value in meta["expression"].items():
        e[ict.expression_names.index(name)] = value
    head = ict.neutral + np.tensordot(w, ict.identity, 1) + np.tensordot(e, ict.expression, 1)
    d = cKDTree(head[ict.skin_vertices]).query(head_frame)[0]
    assert d.min() > 1e-4
    # ...while the surface is the same: every scan vertex lies close to the head
    assert np.percentile(d, 99) < 6.0


@pytest.mark.parametrize("units,factor", [("cm", 0.1), ("m", 0.001)])
def test_units(ict, units, factor):
    from palnet.synth import generate_scan
    mm, lmm, _ = generate_scan(1002, ict, pose="canonical")
    other, lo, meta = generate_scan(1002, ict, pose="canonical", units=units)
    assert meta["units"] == units and lo.units == units
    np.testing.assert_allclose(other.vertices, mm.vertices * factor, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(lo.points, lmm.points * factor, rtol=1e-9, atol=1e-9)


def test_any_pose_covers_rotations(ict):
    from palnet.synth import generate_scan
    zs = []
    for seed in range(1010, 1016):
        _, _, meta = generate_scan(seed, ict, pose="any")
        zs.append(np.asarray(meta["pose_matrix_mm"])[:3, 2])  # where the face points
    zs = np.array(zs)
    assert (zs @ zs.T).min() < 0.0  # some faces point in opposite half-spaces


def test_missing_model_file_is_one_clear_line(tmp_path, capsys):
    missing = tmp_path / "nope.npz"
    assert main(["synth", "--n", "1", "-o", str(tmp_path / "o"), "--ict", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(missing) in err and "not found" in err


def test_bad_model_file_is_one_clear_line(tmp_path):
    from palnet.synth import load_ict
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(PalnetError) as info:
        load_ict(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_crop_variants_keep_the_head_and_change_the_extent(ict):
    from palnet.synth import ICT_TO_LPS, generate_scan
    ref, ref_lm, _ = generate_scan(1001, ict, pose="canonical")
    extents = {}
    for crop in ("face", "head", "shoulders"):
        mesh, lms, info = generate_scan(1001, ict, pose="canonical", crop=crop)
        assert info["crop"] == crop
        # the same head: identity and expression depend on the seed alone
        assert info["identity_weights"] == generate_scan(1001, ict, pose="canonical")[2]["identity_weights"]
        moved = np.linalg.norm(lms.points - ref_lm.points, axis=1)  # re-meshed and noisy, but the same head
        assert moved.mean() < 0.5 and moved.max() < 2.0
        assert closest_points_on_surface(mesh, lms.points)[2].max() <= 0.05
        extents[crop] = np.ptp(mesh.vertices @ ICT_TO_LPS, axis=0)  # x left, y up, z forward
    assert extents["face"][1] < extents["head"][1] < extents["shoulders"][1]  # taller and taller
    assert extents["shoulders"][0] > 300.0  # shoulder to shoulder
    assert extents["face"][2] < extents["head"][2]  # the back of the head only in "head"


def test_spikes_stick_out_and_spare_the_landmarks(ict):
    from palnet.synth import generate_scan
    clean, lms, _ = generate_scan(1002, ict, crop="face")
    spiky, lms2, info = generate_scan(1002, ict, crop="face", spikes=0.02)
    assert info["spikes"] == round(0.02 * clean.n_vertices)
    moved = np.linalg.norm(spiky.vertices - clean.vertices, axis=1)
    assert (moved > 2.9).sum() == info["spikes"] and moved.max() <= 30.0 + 1e-6
    np.testing.assert_array_equal(lms.points, lms2.points)
    assert cKDTree(lms.points).query(clean.vertices[moved > 0])[0].min() > 3.0  # none grows from near a landmark


def test_default_scans_do_not_change_with_the_variants(ict):
    """Data sets made before the crop and spike options existed are reproduced exactly."""
    from palnet.synth import generate_scan
    a, _, info = generate_scan(1003, ict)
    assert "crop" not in info and "spikes" not in info
    b, _, _ = generate_scan(1003, ict, crop="random", spikes=0.0)
    assert np.array_equal(a.vertices, b.vertices)


def test_synth_command_takes_crop_and_spikes(tmp_path, ict_path):
    out = tmp_path / "s"
    assert main(["synth", "--n", "1", "--seed", "1004", "-o", str(out), "--ict", str(ict_path),
                 "--crop", "shoulders", "--spikes", "0.01", "--jobs", "1"]) == 0
    meta = json.loads((out / "synth_01004" / "meta.json").read_text())
    assert meta["crop"] == "shoulders" and meta["spikes"] > 0


@pytest.mark.parametrize("kw,message", [({"crop": "torso"}, "unknown crop 'torso'"),
                                        ({"spikes": 0.7}, "spikes must be a fraction"),
                                        ({"closed_lips": 1.5}, "closed lips must be a chance")])
def test_bad_variant_is_a_clear_error(ict, kw, message):
    from palnet.synth import generate_scan
    with pytest.raises(PalnetError, match=message):
        generate_scan(1000, ict, **kw)


def _border_near(scan, point, radius):
    from palnet.geometry import edges_and_border
    border = edges_and_border(scan.triangles, scan.n_vertices)[1]
    return int((np.linalg.norm(scan.vertices[border] - point, axis=1) < radius).sum())


def test_closed_lips_meet_in_a_shallow_crease(ict):
    """A real scanner sees closed lips as two surfaces meeting in a crease; the head model's lips
    fold 3-7 mm deep into an open mouth. With --closed-lips the mouth has no opening, the crease is
    about a mm deep, and the stomion (the upper lip's edge) still lies on the surface."""
    from palnet.synth import generate_scan
    open_, lo, info_o = generate_scan(1000, ict, pose="canonical")
    closed, lc, info = generate_scan(1000, ict, pose="canonical", closed_lips=1.0)
    assert info["closed_lips"] is True
    sto = lo.points[lo.labels.index("sto")]
    m = np.asarray(info_o["pose_matrix_mm"])  # head model frame (x left, y up, z out of the face) -> scan
    assert _border_near(open_, sto, 12.0) > 20 and _border_near(closed, sto, 12.0) == 0
    # the lips' inner surfaces are gone: nothing lies more than 3 mm behind the stomion near it
    def deepest(scan):  # how far the surface goes back behind the stomion on the midline
        d = (scan.vertices - sto) @ m[:3, :3]
        return d[(np.abs(d[:, 0]) < 1.0) & (np.abs(d[:, 1]) < 6.0) & (np.abs(d[:, 2]) < 15.0), 2].min()
    assert deepest(open_) < -3.0 and deepest(closed) > -1.5  # 3.3 and 0.6 mm here
    assert np.linalg.norm(lc.points[lc.labels.index("sto")] - sto) < 0.5
    assert np.isfinite(lc.points).all()
    assert np.abs(closest_points_on_surface(closed, lc.points)[0] - lc.points).max() < 1e-6


def test_open_lips_stay_open_and_other_scans_are_unchanged(ict):
    """Lips apart (the jaw opened) are not closed over; a scan the chance leaves open is the scan
    made without the option."""
    from palnet.ict_landmarks import mouth_rings
    from palnet.synth import generate_scan
    from palnet.variety import CLOSED_LIPS_RINGS, close_lips
    rings = mouth_rings(CLOSED_LIPS_RINGS)
    assert close_lips(ict.neutral, ict.triangles, rings, ict.neutral) is not None
    jaw = ict.neutral + 0.45 * ict.expression[ict.expression_names.index("jawOpen")]
    assert close_lips(jaw, ict.triangles, rings, ict.neutral) is None
    for seed in range(1000, 1030):
        a, _, info_a = generate_scan(seed, ict, closed_lips=0.3)
        if "closed_lips" not in info_a:
            b, _, _ = generate_scan(seed, ict)
            assert np.array_equal(a.vertices, b.vertices) and np.array_equal(a.triangles, b.triangles)
            break
    else:
        pytest.fail("no scan left open at a chance of 0.3")
