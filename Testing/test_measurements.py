"""palnet.measurements: definitions, values against their definitions, missing landmarks, units,
standard errors, asymmetry and norms."""
import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from palnet import Landmarks, PalnetError
from palnet.measurements import (Definitions, asymmetry, load_definitions, load_norms, measure, measure_many,
                                 sd_from_confidence)
from palnet.measurements.definitions import default_definitions_path
from palnet.protocol import default_protocol


def by_id(measurements):
    return {m.id: m for m in measurements}


def direct_value(defn, points, defs, values):
    """A measurement computed straight from its definition, independently of palnet's code."""
    p = {lab: np.asarray(x, float) for lab, x in points.items()}
    if defn.kind == "distance":
        a, b = defn.landmarks
        return float(np.sqrt(np.sum((p[b] - p[a]) ** 2)))
    if defn.kind == "angle":
        a, v, b = defn.landmarks
        u, w = p[a] - p[v], p[b] - p[v]
        return float(np.degrees(np.arccos(np.clip(u @ w / np.linalg.norm(u) / np.linalg.norm(w), -1, 1))))
    if defn.kind == "ratio":
        return defn.scale * values[defn.of[0]] / values[defn.of[1]]
    if defn.kind == "projected":
        pairs = [(lab, lab[:-2] + "_L") for lab in p if lab.endswith("_R") and lab[:-2] + "_L" in p]
        x = sum(p[left] - p[right] for right, left in pairs)
        x = x / np.linalg.norm(x)
        y = np.mean([p[lab] for lab in defs.frame_upper], axis=0) - np.mean([p[lab] for lab in defs.frame_lower], axis=0)
        y = y - (y @ x) * x
        y = y / np.linalg.norm(y)
        axis = {"x": x, "y": y, "z": np.cross(x, y)}[defn.axis]
        a, b = defn.landmarks
        return float((p[b] - p[a]) @ axis)
    if defn.kind == "asymmetry":
        return direct_asymmetry(points, defn)
    raise AssertionError(defn.kind)


def direct_asymmetry(points, defn=None):
    """RMS half-gap between each landmark and its superimposed mirror image (scipy's rotation fit)."""
    proto = default_protocol()
    labels = [lab for lab in proto.labels if lab in points]
    P = np.array([points[lab] for lab in labels])
    Q = np.array([points[proto.definition(lab).mirror] for lab in labels]) * [-1, 1, 1]
    rot, _ = Rotation.align_vectors(P - P.mean(0), Q - Q.mean(0))
    gap = 0.5 * (P - (rot.apply(Q - Q.mean(0)) + P.mean(0)))
    mag = dict(zip(labels, np.linalg.norm(gap, axis=1)))
    if defn is None:
        return mag
    chosen = [lab for lab in labels if defn.region is None or proto.region_of(lab) == defn.region]
    return float(np.sqrt(np.mean([mag[lab] ** 2 for lab in chosen])))


@pytest.fixture(scope="module")
def defs():
    return load_definitions()


@pytest.fixture
def face(sample):
    return sample[1]


# ---------------------------------------------------------------- the shipped definitions

def test_shipped_definitions_are_valid_for_the_protocol(defs):
    protocol = default_protocol()
    load_definitions(default_definitions_path(), protocol=protocol)  # every label and region known
    assert default_definitions_path().parent == __import__("palnet.resources", fromlist=["x"]).default_protocol_path().parent
    assert len(defs) >= 30
    kinds = {m.kind for m in defs}
    assert kinds == {"distance", "projected", "angle", "ratio", "arc", "asymmetry"}
    for needed in ("en-en", "ex-ex", "ex-en_R", "ex-en_L", "al-al", "ac-ac", "zy-zy", "go-go", "t-t", "ch-ch",
                   "cph-cph", "n-sn", "n-sto", "sn-sto", "sto-sl", "sn-me", "n-me", "tr-n", "tr-me", "ls-sto",
                   "sto-li", "sbal-sn_R", "sbal-sn_L", "sa-sba_R", "sa-sba_L", "obs-pa_R", "obs-pa_L", "sn-prn_z",
                   "facial_index", "nasal_index", "intercanthal_index", "nasolabial_angle", "nasofrontal_angle",
                   "facial_convexity", "total_facial_convexity", "mentolabial_angle", "t-sn-t", "t-pg-t",
                   "asymmetry_total"):
        assert needed in defs, needed
    assert defs["nasolabial_angle"].landmarks == ("c", "sn", "ls")
    assert defs["facial_index"].of == ("n-me", "zy-zy") and defs["facial_index"].units == ""
    assert all(m.units == {"angle": "deg", "ratio": ""}.get(m.kind, "mm") for m in defs)


def test_at_least_30_values_per_face_without_a_scan(face, defs):
    got = measure(face, defs)
    assert [m.id for m in got] == defs.ids
    assert sum(m.value is not None for m in got) >= 30
    assert all(m.value is None and "no scan" in m.note for m in got if m.kind == "arc")


def test_every_value_equals_its_definition_computed_directly(face, defs):
    got = by_id(measure(face, defs, samples=0))
    points = face.as_dict()
    values = {}
    for m in defs:
        if m.kind == "arc":
            continue
        expected = direct_value(m, points, defs, values)
        values[m.id] = expected
        assert got[m.id].value == pytest.approx(expected, rel=1e-9, abs=1e-9), m.id
        assert got[m.id].se is None and got[m.id].units == m.units


# ---------------------------------------------------------------- known geometry

SIMPLE = {
    "format": "palnet-measurements", "version": 1,
    "frame": {"upper": ["top"], "lower": ["bottom"]},
    "measurements": [
        {"id": "ab", "kind": "distance", "landmarks": ["a", "b"]},
        {"id": "ac", "kind": "distance", "landmarks": ["a", "c"]},
        {"id": "right", "kind": "angle", "landmarks": ["b", "a", "c"]},
        {"id": "sixty", "kind": "angle", "landmarks": ["b", "a", "d"]},
        {"id": "straight", "kind": "angle", "landmarks": ["b", "a", "e"]},
        {"id": "index", "kind": "ratio", "of": ["ab", "ac"], "scale": 100},
        {"id": "of_index", "kind": "ratio", "of": ["index", "index"]},
        {"id": "ab_x", "kind": "projected", "landmarks": ["a", "b"], "axis": "x"},
        {"id": "ab_y", "kind": "projected", "landmarks": ["a", "b"], "axis": "y"},
        {"id": "ab_z", "kind": "projected", "landmarks": ["a", "b"], "axis": "z"},
        {"id": "width", "kind": "distance", "landmarks": ["p_R", "p_L"]},
    ],
}


def simple_face(rotation=None, shift=(0.0, 0.0, 0.0), units="mm"):
    pts = {"a": [0, 0, 0], "b": [3, 4, 0], "c": [0, 0, 5], "d": [1.5, 2.0, 2.5 * np.sqrt(3)],
           "e": [-6, -8, 0], "p_R": [-10, 0, 0], "p_L": [10, 0, 0], "top": [0, 50, 0], "bottom": [0, -50, 0]}
    labels = list(pts)
    p = np.array([pts[k] for k in labels], float)
    if rotation is not None:
        p = p @ rotation.T
    p = (p + shift) * {"mm": 1.0, "cm": 0.1, "m": 0.001}[units]
    return Landmarks(labels, p, units=units)


def test_known_distances_angles_ratios_and_projections():
    defs = Definitions.from_dict(SIMPLE)
    rot = Rotation.from_euler("xyz", [20, -35, 70], degrees=True).as_matrix()
    for face in (simple_face(), simple_face(rot, (11.0, -40.0, 300.0)), simple_face(rot, (1, 2, 3), units="cm")):
        got = by_id(measure(face, defs, samples=0))
        assert got["ab"].value == pytest.approx(5.0)
        assert got["ac"].value == pytest.approx(5.0)
        assert got["right"].value == pytest.approx(90.0)
        assert got["sixty"].value == pytest.approx(60.0)
        assert got["straight"].value == pytest.approx(180.0)
        assert got["index"].value == pytest.approx(100.0) and got["index"].units == ""
        assert got["of_index"].value == pytest.approx(1.0)
        # The face frame: x from p_R to p_L, y up from bottom to top, z = x cross y.
        assert got["ab_x"].value == pytest.approx(3.0)
        assert got["ab_y"].value == pytest.approx(4.0)
        assert got["ab_z"].value == pytest.approx(0.0, abs=1e-9)
        assert got["width"].value == pytest.approx(20.0)
        assert got["ab"].units == "mm" and got["right"].units == "deg"


def test_projected_axis_z_points_out_of_the_face(face, defs):
    got = by_id(measure(face, defs, samples=0))
    assert 0 < got["sn-prn_z"].value < got["sn-prn"].value  # the nasal tip stands in front of subnasale


def test_values_do_not_depend_on_pose_or_units(face, defs):
    rot = Rotation.from_euler("zyx", [120, 40, -75], degrees=True).as_matrix()
    moved = Landmarks(face.labels, (face.points @ rot.T + [300.0, -20.0, 5.0]) / 10.0, units="cm")
    a, b = measure(face, defs, samples=0), measure(moved, defs, samples=0)
    for x, y in zip(a, b):
        assert (x.value is None) == (y.value is None)
        if x.value is not None:
            assert y.value == pytest.approx(x.value, rel=1e-7, abs=1e-7), x.id


# ---------------------------------------------------------------- missing landmarks

def test_a_missing_landmark_empties_only_its_measurements(face, defs):
    full = by_id(measure(face, defs, samples=0))
    keep = [lab for lab in face.labels if lab != "zy_L"]
    absent = face.select(keep)
    nan_points = face.points.copy()
    nan_points[face.labels.index("zy_L")] = np.nan
    as_nan = Landmarks(face.labels, nan_points, units=face.units)
    for variant in (absent, as_nan):
        got = by_id(measure(variant, defs, samples=0))
        for mid, m in got.items():
            if "zy_L" in m.landmarks:
                assert m.value is None and m.se is None and "zy_L" in m.note, mid
            elif m.kind == "arc":
                assert m.value is None
            else:
                assert m.value is not None, mid
                if m.kind in ("distance", "angle") or (m.kind == "ratio" and "zy_L" not in defs.landmarks_of(mid)):
                    assert m.value == pytest.approx(full[mid].value, rel=1e-12), mid
    assert {m for m, x in by_id(measure(absent, defs, samples=0)).items() if x.value is None and x.kind != "arc"} == {
        "zy-zy", "facial_index", "upper_face_index", "mouth_face_width_index", "mandibulofacial_index",
        "asymmetry_total", "asymmetry_cheeks_jaw"}


def test_a_face_without_its_frame_leaves_projections_empty():
    defs = Definitions.from_dict(SIMPLE)
    face = simple_face()
    got = by_id(measure(face.select([x for x in face.labels if x not in ("p_R", "p_L")]), defs, samples=0))
    assert got["ab_x"].value is None and "frame" in got["ab_x"].note
    assert got["ab"].value == pytest.approx(5.0)


# ---------------------------------------------------------------- standard errors

def test_confidence_to_sd_inverts_the_2mm_chance():
    rng = np.random.default_rng(1)
    for c in (0.2, 0.5, 0.8, 0.95):
        s = float(sd_from_confidence(c))
        r = np.linalg.norm(rng.normal(scale=s, size=(200000, 3)), axis=1)
        assert np.mean(r <= 2.0) == pytest.approx(c, abs=0.005)
    assert sd_from_confidence([0.0])[0] == pytest.approx(10.2, abs=0.3)  # clipped: no infinite SD
    assert np.isnan(sd_from_confidence([np.nan])[0])
    assert np.all(np.diff(sd_from_confidence(np.linspace(0.01, 0.99, 50))) < 0)


def test_standard_errors_follow_confidence(face, defs):
    assert all(m.se is None for m in measure(face, defs))  # the sample file carries no confidence
    conf = Landmarks(face.labels, face.points, np.full(len(face), 0.7), units=face.units)
    got = by_id(measure(conf, defs))
    s = float(sd_from_confidence(0.7))
    # An isotropic SD s on both ends moves a distance by sqrt(2) s.
    assert got["en-en"].se == pytest.approx(np.sqrt(2) * s, rel=0.15)
    assert got["zy-zy"].se == pytest.approx(np.sqrt(2) * s, rel=0.15)
    assert all(m.se is not None and m.se > 0 for m in got.values() if m.value is not None)
    sure = by_id(measure(Landmarks(face.labels, face.points, np.full(len(face), 0.95), units=face.units), defs))
    assert sure["en-en"].se < got["en-en"].se
    assert by_id(measure(face, defs, default_sd=1.0))["en-en"].se == pytest.approx(np.sqrt(2), rel=0.15)
    assert by_id(measure(face, defs, sd=2.0))["en-en"].se == pytest.approx(2 * np.sqrt(2), rel=0.15)
    assert all(m.se is None for m in measure(conf, defs, samples=0))


def test_standard_errors_are_reproducible_and_cohort_independent(face, defs):
    rng = np.random.default_rng(5)
    faces = [Landmarks(face.labels, face.points + rng.normal(scale=2, size=face.points.shape),
                       rng.uniform(0.3, 0.95, len(face)), units=face.units) for _ in range(3)]
    alone = measure(faces[1], defs, seed=3)
    again = measure(faces[1], defs, seed=3)
    cohort = measure_many(faces, defs, seed=3)[1]
    other_seed = measure(faces[1], defs, seed=4)
    for a, b, c, d in zip(alone, again, cohort, other_seed):
        assert a.value == b.value == c.value == d.value
        assert a.se == b.se == c.se
    assert any(a.se != d.se for a, d in zip(alone, other_seed) if a.se is not None)


# ---------------------------------------------------------------- asymmetry

def symmetric_face(face):
    """The sample face made exactly symmetric (its mirror-averaged shape), then moved."""
    proto = default_protocol()
    p = face.in_units("mm").points
    mirrored = p[proto.mirror_permutation()] * [-1, 1, 1]
    rot, _ = Rotation.align_vectors(p - p.mean(0), mirrored - mirrored.mean(0))
    sym = 0.5 * (p + rot.apply(mirrored - mirrored.mean(0)) + p.mean(0))
    for _ in range(5):  # averaging once leaves a little; repeat until exact
        m = sym[proto.mirror_permutation()] * [-1, 1, 1]
        rot, _ = Rotation.align_vectors(sym - sym.mean(0), m - m.mean(0))
        sym = 0.5 * (sym + rot.apply(m - m.mean(0)) + sym.mean(0))
    turn = Rotation.from_euler("xyz", [10, 50, -20], degrees=True)
    return Landmarks(list(proto.labels), turn.apply(sym) + [40, -5, 12])


def test_a_symmetric_face_has_zero_asymmetry(face, defs):
    sym = symmetric_face(face)
    a = asymmetry(sym)
    assert a.total == pytest.approx(0.0, abs=1e-6)
    assert np.nanmax(a.magnitudes) < 1e-6 and all(v < 1e-6 for v in a.regions.values())
    got = by_id(measure(sym, defs, samples=0))
    assert all(m.value < 1e-6 for m in got.values() if m.kind == "asymmetry")


def test_asymmetry_matches_a_direct_procrustes_fit(face):
    a = asymmetry(face)
    expected = direct_asymmetry(face.as_dict())
    for lab, mag in zip(a.labels, a.magnitudes):
        assert mag == pytest.approx(expected[lab], abs=1e-9)
    assert a.total == pytest.approx(np.sqrt(np.mean(np.square(list(expected.values())))))
    assert set(a.regions) == set(default_protocol().regions)
    assert np.allclose(a.symmetric + a.vectors, face.points)
    # The nearest symmetric face is symmetric.
    assert asymmetry(Landmarks(a.labels, a.symmetric)).total < 0.02 * a.total


def test_asymmetry_of_a_moved_landmark(face):
    sym = symmetric_face(face)
    p = sym.points.copy()
    left = Rotation.from_euler("xyz", [10, 50, -20], degrees=True).apply([1.0, 0, 0])
    p[sym.labels.index("prn")] += 4.0 * left  # the nasal tip 4 mm to the subject's left
    a = asymmetry(Landmarks(sym.labels, p))
    worst = a.labels[int(np.nanargmax(a.magnitudes))]
    # Its mirror image lies 8 mm away; the nearest symmetric face puts it back by up to 4 mm
    # (the superimposition takes up a little of that by turning the whole face).
    assert worst == "prn" and 3.0 < a.magnitudes[a.labels.index("prn")] <= 4.0 + 1e-9
    assert a.regions["nose"] == max(a.regions.values())


def test_asymmetry_with_a_missing_landmark(face):
    a = asymmetry(face.select([lab for lab in face.labels if lab != "ex_L"]))
    assert a.total is None and a.regions["orbits"] is None and set(a.missing) == {"ex_L"}
    assert np.isnan(a.magnitudes[a.labels.index("ex_R")]) and "ex_L" not in a.labels
    assert a.regions["nose"] is not None


# ---------------------------------------------------------------- norms

def test_norms_give_z_scores(tmp_path, face, defs):
    values = by_id(measure(face, defs, samples=0))
    path = tmp_path / "norms.csv"
    path.write_text("measurement,group,mean,sd,source\n"
                    "en-en,adult female,{},2.0,Farkas\n"
                    "en-en,adult male,{},4.0,Farkas\n"
                    "nasolabial_angle,adult female,100,10,x\n"
                    "no-such,adult female,1,1,x\n".format(values["en-en"].value - 3.0, values["en-en"].value))
    norms = load_norms(path)
    got = by_id(measure(face, defs, norms=norms, group="adult female"))
    assert got["en-en"].z == pytest.approx(1.5)
    assert got["nasolabial_angle"].z == pytest.approx((values["nasolabial_angle"].value - 100) / 10)
    assert got["ex-ex"].z is None
    assert by_id(measure(face, defs, norms=str(path), group="adult male"))["en-en"].z == pytest.approx(0.0)
    with pytest.raises(PalnetError, match="choose one"):
        measure(face, defs, norms=norms)
    with pytest.raises(PalnetError, match="no group 'child'"):
        measure(face, defs, norms=norms, group="child")


@pytest.mark.parametrize("text, message", [
    ("measurement,mean,sd\nen-en,1,2\n", "missing: group"),
    ("measurement,group,mean,sd\nen-en,a,x,2\n", "row 2 (en-en): mean 'x' is not a number"),
    ("measurement,group,mean,sd\nen-en,a,1,0\n", "sd must be a positive number"),
    ("measurement,group,mean,sd\nen-en,a,1,2\nen-en,a,1,3\n", "row 3: en-en in group 'a' appears twice"),
    ("measurement,group,mean,sd\n", "no rows"),
])
def test_bad_norms_files_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "norms.csv"
    path.write_text(text)
    with pytest.raises(PalnetError) as info:
        load_norms(path)
    assert message in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- bad definition files

def measurement(**kw):
    d = {"id": "m", "kind": "distance", "landmarks": ["a", "b"]}
    d.update(kw)
    return {k: v for k, v in d.items() if v is not None}


def doc(*items, **top):
    d = {"format": "palnet-measurements", "version": 1, "measurements": list(items)}
    d.update(top)
    return d


BAD_DEFINITIONS = [
    ("{not json", "not valid JSON"),
    ([], "must be a JSON object"),
    ({"version": 1, "measurements": []}, "missing field 'format'"),
    ({"format": "palnet-protocol", "landmarks": []}, "this is a landmark protocol"),
    (doc(version=9), "newer than this palnet reads"),
    ({"format": "palnet-measurements"}, "missing field 'measurements'"),
    (doc(), "the measurement list is empty"),
    (doc(measurement(id="x y")), "id 'x y': use letters"),
    (doc({"kind": "distance"}), "measurement 1 is missing field 'id'"),
    (doc(measurement(), measurement()), "measurement id 'm' appears twice"),
    (doc(measurement(kind="volume")), "unknown kind 'volume'"),
    (doc(measurement(landmarks=["a"])), "a distance needs 2 landmarks, not 1"),
    (doc(measurement(kind="angle")), "an angle needs 3 landmarks, not 2"),
    (doc(measurement(landmarks=["a", "a"])), "landmark 'a' is named twice"),
    (doc(measurement(landmarks="a b")), "'landmarks' must be a list of landmark labels"),
    (doc(measurement(units="cm")), "units 'cm', but distance measurements are in 'mm'"),
    (doc(measurement(lanmarks=["a", "b"])), "unknown field 'lanmarks'"),
    (doc(measurement(axis="x")), "field 'axis' is for projected measurements"),
    (doc(measurement(kind="projected", axis="w"), frame={"upper": ["a"], "lower": ["b"]}), "'axis' must be one of"),
    (doc(measurement(kind="projected", axis="x")), "has no 'frame'"),
    (doc(measurement(kind="ratio")), "give 'of', not 'landmarks'"),
    (doc({"id": "r", "kind": "ratio", "of": ["m"]}), "a ratio needs 'of': [numerator id, denominator id]"),
    (doc({"id": "r", "kind": "ratio", "of": ["m", "q"]}, measurement()), "'of' names 'q', which is not a measurement"),
    (doc({"id": "r", "kind": "ratio", "of": ["r", "r"]}), "ratio 'r' depends on itself"),
    (doc({"id": "r", "kind": "ratio", "of": ["m", "m"], "scale": -1}, measurement()), "'scale' must be a positive"),
    (doc({"id": "r", "kind": "ratio", "of": ["m", "g"]}, measurement(), measurement(id="g", kind="angle",
                                                                                     landmarks=["a", "b", "c"])),
     "a ratio divides like by like"),
    (doc(measurement(kind="arc", landmarks=["a", "a", "b"])), "names the same landmark twice in a row"),
    (doc(measurement(kind="asymmetry", landmarks=["a"], region="nose")), "give 'landmarks' or 'region', not both"),
    (doc(measurement(), frame={"upper": ["a"]}), "'frame' 'lower' must be a non-empty list"),
    (doc(measurement(name=3)), "measurement 'm' 'name' must be a string"),
]


@pytest.mark.parametrize("content, message", BAD_DEFINITIONS)
def test_bad_definition_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "mine.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(PalnetError) as info:
        load_definitions(path)
    text = str(info.value)
    assert message in text, text
    assert text.startswith(str(path) + ": ") and "\n" not in text


def test_definitions_checked_against_a_protocol(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(doc(measurement(landmarks=["en_R", "en_l"]))))
    load_definitions(path)  # fine alone: a face without en_l just leaves it empty
    with pytest.raises(PalnetError, match="uses landmark 'en_l', which protocol 'palnet50' does not have"):
        load_definitions(path, protocol=default_protocol())
    path.write_text(json.dumps(doc(measurement(kind="asymmetry", landmarks=None, region="ear"))))
    with pytest.raises(PalnetError, match="region 'ear' is not a region of protocol 'palnet50'"):
        load_definitions(path, protocol=default_protocol())
    with pytest.raises(PalnetError, match="measurement definitions file not found"):
        load_definitions(tmp_path / "none.json")


def test_a_user_definition_file_extends_the_set(tmp_path, face):
    shipped = json.loads(default_definitions_path().read_text())
    shipped["measurements"].append({"id": "ex-ch_R", "name": "eye to mouth corner", "kind": "distance",
                                    "landmarks": ["ex_R", "ch_R"], "group": "mine"})
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(shipped))
    got = by_id(measure(face, load_definitions(path), samples=0))
    d = face.as_dict()
    assert got["ex-ch_R"].value == pytest.approx(np.linalg.norm(d["ex_R"] - d["ch_R"]))
    assert got["ex-ch_R"].group == "mine"


def test_the_documented_example_definitions_load(face):
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parent.parent / "docs" / "measurements.md").read_text(encoding="utf-8")
    example = json.loads(re.search(r"```json\n(.*?)```", text, re.S).group(1))
    got = by_id(measure(face, Definitions.from_dict(example), samples=0))
    assert all(m.value is not None for m in got.values())
    assert got["lip_ratio"].value == pytest.approx(got["ls-sto"].value / got["sto-li"].value)
