"""Anatomy the scan lacks (a hole, a cut) is reported, not placed on the hole's rim as
confidently as any other landmark."""
import numpy as np
import pytest

from palnet.cleanup import remove_vertices
from palnet.pipeline import predict


def test_a_whole_scan_misses_nothing(model, sample):
    pred = predict(sample[0], model)
    assert pred.status == "ok" and pred.missing == () and pred.message == ""


@pytest.mark.parametrize("label,radius", [("prn", 12.5), ("ch_L", 10.0)])
def test_a_hole_over_a_landmark_is_reported(model, sample, label, radius):
    """The measured case: a 25 mm hole over the nose gave status ok and the pronasale 25 mm
    off at confidence 0.47, the same range as correct points."""
    mesh, truth = sample
    centre = truth.points[truth.labels.index(label)]
    holed = remove_vertices(mesh, np.linalg.norm(mesh.vertices - centre, axis=1) < radius)
    pred = predict(holed, model)
    assert pred.missing == (label,)
    assert pred.status == "partial" and label in pred.message and "hole" in pred.message
    conf = dict(zip(pred.landmarks.labels, pred.landmarks.confidence))
    assert conf[label] == 0.0
    assert min(c for lab, c in conf.items() if lab != label) > 0.0
    # missing, not placed: no position at all, and every other landmark has one
    gone = ~np.isfinite(pred.landmarks.points).all(axis=1)
    assert [lab for lab, g in zip(pred.landmarks.labels, gone) if g] == [label]


def test_a_scan_cut_above_the_mouth_misses_the_mouth(model, sample):
    """Landmarks past the scan's edge, where the fitted face puts lips the scan does not have."""
    mesh, truth = sample
    sn = truth.points[truth.labels.index("sn")]
    up = truth.points[truth.labels.index("n")] - sn
    below = (mesh.vertices - sn) @ (up / np.linalg.norm(up)) < -6.0
    pred = predict(remove_vertices(mesh, below), model)
    assert {"sto", "li", "sl", "pg", "me"} <= set(pred.missing), pred.missing
    assert not {"n", "prn", "en_R", "en_L"} & set(pred.missing)
    assert pred.status != "ok"


@pytest.mark.parametrize("ext", ["mrk.json", "fcsv", "csv", "txt"])
def test_missing_landmarks_round_trip_in_every_format(tmp_path, ext):
    """Each format says "missing" in its own way (Slicer's positionStatus in .mrk.json) and
    reading gives the landmark back without a position."""
    import json

    from palnet.datatypes import Landmarks
    from palnet.landmark_io import read_landmarks, write_landmarks
    pts = np.array([[1.0, 2.0, 3.0], [np.nan] * 3, [4.0, 5.0, 6.0]])
    lm = Landmarks(["n", "t_R", "prn"], pts, np.array([0.9, 0.0, 0.8]), ["Nasion", "Tragion", "Pronasale"], "mm")
    path = write_landmarks(lm, tmp_path / ("out." + ext))
    if ext == "mrk.json":
        cps = json.loads(path.read_text())["markups"][0]["controlPoints"]
        assert [cp["positionStatus"] for cp in cps] == ["defined", "missing", "defined"]
    back = read_landmarks(path).select(["n", "t_R", "prn"])
    assert np.isnan(back.points[1]).all()
    np.testing.assert_allclose(back.points[[0, 2]], pts[[0, 2]])


def test_a_file_of_only_missing_landmarks_is_refused(tmp_path):
    from palnet.datatypes import Landmarks
    from palnet.errors import PalnetError
    from palnet.landmark_io import write_landmarks
    with pytest.raises(PalnetError, match="missing"):
        write_landmarks(Landmarks(["n"], np.full((1, 3), np.nan), units="mm"), tmp_path / "x.csv")


def test_a_picture_leaves_missing_landmarks_out(tmp_path, sample):
    from palnet.datatypes import Landmarks
    from palnet.render import RenderOptions, render_landmarks
    mesh, truth = sample
    pts = truth.points.copy()
    pts[:5] = np.nan
    out = render_landmarks(mesh, Landmarks(truth.labels, pts, units=truth.units), tmp_path / "m.png",
                           RenderOptions(size=(200, 200)))
    assert (tmp_path / "m.png").stat().st_size > 1000 and str(out).endswith("m.png")


def test_a_face_only_capture_places_no_ear_point_on_the_cut(model, ict_path):
    """Held-out seed 1006 cut 2-12 mm in front of the tragions (`palnet synth --crop front`): the
    truth has no ear point, yet both tragions, subauralia and otobasia superiora used to be
    placed on the cut, less than 2 mm past it. An ear whose top and back are gone has none of
    its points on the scan's border."""
    from palnet.synth import generate_scan, load_ict
    mesh, truth, _ = generate_scan(1006, load_ict(ict_path), crop="front")
    ears = {name + "_" + side for name in ("t", "sa", "sba", "pa", "obs") for side in "RL"}
    absent = {lab for lab, p in zip(truth.labels, truth.points) if not np.isfinite(p).all()}
    assert ears <= absent
    pred = predict(mesh, model)
    assert ears <= set(pred.missing), sorted(ears - set(pred.missing))
    placed = {lab for lab, p in zip(pred.landmarks.labels, pred.landmarks.points) if np.isfinite(p).all()}
    assert not placed & ears
    assert pred.status == "partial"


def test_a_face_only_capture_that_cut_the_jaw_angles_away_has_no_gonion(model, ict_path):
    """Training seed 3001 cut 2-12 mm in front of the tragions: the cut passes over both angles of
    the mandible, and the truth has no gonion. They used to be placed on the cut (the gonion sits at
    the face template's edge and was judged by the loose limits of the thinly covered landmarks);
    with the border nearest, it is judged as the landmarks inside the template are."""
    from palnet.synth import generate_scan, load_ict
    mesh, truth, _ = generate_scan(3001, load_ict(ict_path), crop="front")
    absent = {lab for lab, p in zip(truth.labels, truth.points) if not np.isfinite(p).all()}
    assert {"go_R", "go_L"} <= absent
    pred = predict(mesh, model)
    assert {"go_R", "go_L"} <= set(pred.missing)
    placed = {lab for lab, p in zip(pred.landmarks.labels, pred.landmarks.points) if np.isfinite(p).all()}
    assert placed == set(truth.labels) - absent  # nothing else lost, nothing placed the truth lacks


def _flatten_ear(mesh, truth, side):
    """The sample with one ear smoothed into the side of the head, as the rough sides of a stereo-
    photogrammetry head scan are: within 30 mm of the ear's centre every vertex goes onto the plane
    fitted to the head 40-55 mm around it, fading back to the scan by 40 mm."""
    from palnet.datatypes import Mesh
    ear = [truth.labels.index(n + "_" + side) for n in ("t", "sa", "sba", "pa", "obs")]
    centre = truth.points[ear].mean(axis=0)
    r = np.linalg.norm(mesh.vertices - centre, axis=1)
    ring = mesh.vertices[(r > 40.0) & (r < 55.0)]
    mid = ring.mean(axis=0)
    normal = np.linalg.svd(ring - mid)[2][2]
    if normal @ (centre - truth.points[truth.labels.index("prn")]) < 0:
        normal = -normal  # out of the head
    w = np.clip((40.0 - r) / 10.0, 0.0, 1.0)[:, None]
    onto = mesh.vertices - ((mesh.vertices - mid) @ normal)[:, None] * normal
    v = mesh.vertices * (1.0 - w) + onto * w
    # The auricle's back and folds, pressed flat, would face into the head: a wall has none.
    p = v[mesh.triangles]
    inward = (np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]) @ normal < 0) & (w[mesh.triangles, 0] > 0).any(axis=1)
    return Mesh(v, mesh.triangles[~inward], mesh.units)


def test_an_ear_the_scan_does_not_show_is_missing(model, sample):
    """A real stereo-photogrammetry head (menpo3d's james) has no ear one can make out, only a
    smooth wall, yet its ten ear points were placed on that wall, status ok, confidences
    0.45-0.74 like any other. Smoothed away here on one side: that ear's points are missing,
    the other ear's are not."""
    mesh, truth = sample
    pred = predict(_flatten_ear(mesh, truth, "R"), model)
    right = {n + "_R" for n in ("t", "sa", "sba", "pa", "obs")}
    assert set(pred.missing) == right, pred.missing
    assert pred.status == "partial" and "no ear made out on the right side" in pred.message
    conf = dict(zip(pred.landmarks.labels, pred.landmarks.confidence))
    assert all(conf[lab] == 0.0 for lab in right)
    placed = {lab for lab, p in zip(pred.landmarks.labels, pred.landmarks.points) if np.isfinite(p).all()}
    assert placed == set(truth.labels) - right


def _grid(n=24):
    """Triangles of an n x n grid of vertices, and its (u, v) coordinates in [0, 1]."""
    u, v = np.meshgrid(np.linspace(0.0, 1.0, n), np.linspace(0.0, 1.0, n), indexing="ij")
    i = np.arange(n * n).reshape(n, n)
    a, b, c, d = i[:-1, :-1].ravel(), i[1:, :-1].ravel(), i[1:, 1:].ravel(), i[:-1, 1:].ravel()
    return np.concatenate([np.c_[a, b, c], np.c_[a, c, d]]), u.ravel(), v.ravel()


def _cylinder(turn, n=24):
    """A cylinder of radius 10 and height 30 swept through ``turn`` of a full circle."""
    tri, u, v = _grid(n)
    angle = 2.0 * np.pi * turn * u
    return np.c_[10.0 * np.cos(angle), 10.0 * np.sin(angle), 30.0 * v], tri


def test_surface_folding_tells_a_plane_from_a_fold():
    """A plane folds 0 in any pose and size; a half-cylinder 1 - 2/pi (its normals sweep half a
    circle); a whole one 1. Too few triangles: no judgement."""
    from scipy.spatial.transform import Rotation

    from palnet.auricle import surface_folding
    tri, u, v = _grid()
    plane = np.c_[40.0 * u, 30.0 * v, np.zeros_like(u)]
    turned = Rotation.from_rotvec([0.3, -1.1, 0.7]).apply(plane) * 0.01 + 5.0
    everything = np.arange(len(u))
    assert surface_folding(plane, tri, everything) == pytest.approx(0.0, abs=1e-12)
    assert surface_folding(turned, tri, everything) == pytest.approx(0.0, abs=1e-9)
    half = surface_folding(*_cylinder(0.5), everything)
    assert half == pytest.approx(1.0 - 2.0 / np.pi, abs=0.01)
    assert surface_folding(*_cylinder(1.0), everything) == pytest.approx(1.0, abs=1e-9)
    assert np.isnan(surface_folding(plane, tri, np.array([0])))  # two triangles touch one corner


def test_ear_points_on_a_flat_surface_are_flagged_side_by_side():
    """Each side is judged on its own, on the points not already missing; fewer than three: not at all."""
    from scipy.spatial import cKDTree

    from palnet.auricle import EAR_NAMES, ears_not_made_out
    tri, u, v = _grid()
    plane = np.c_[80.0 * u - 40.0, 60.0 * v, np.zeros_like(u)]
    labels = [n + "_" + s for s in "RL" for n in EAR_NAMES] + ["prn"]
    points = np.zeros((len(labels), 3))
    points[:5] = [[-20.0, 30.0, 0.0]] * 5
    points[5:10] = [[20.0, 30.0, 0.0]] * 5
    missing = np.zeros(len(labels), dtype=bool)
    flat, sides = ears_not_made_out(labels, points, missing, plane, tri, cKDTree(plane), 18.0)
    assert sides == ["R", "L"] and flat[:10].all() and not flat[10]
    missing[[5, 6, 7]] = True  # skipped (a model that names other points so): two left points, not judged
    flat, sides = ears_not_made_out(labels, points, missing, plane, tri, cKDTree(plane), 18.0)
    assert sides == ["R"] and flat[:5].all() and not flat[5:].any()
    # missing already (past a cut): they still place the ear, and the two others are flagged
    flat, sides = ears_not_made_out(labels, points, np.zeros(len(labels), bool), plane, tri, cKDTree(plane), 18.0,
                                    missing=missing)
    assert sides == ["R", "L"] and flat[:5].all() and flat[8:10].all() and not flat[5:8].any()
    shell, shell_tri = _cylinder(1.0)  # folded all round: an ear
    points[:10] = [0.0, 10.0, 15.0]
    flat, sides = ears_not_made_out(labels, points, np.zeros(len(labels), bool), shell, shell_tri,
                                    cKDTree(shell), 18.0)
    assert sides == [] and not flat.any()
