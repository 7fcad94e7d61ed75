"""The 50 protocol landmarks on ICT-FaceKit heads (palnet.ict_landmarks)."""
import time

import numpy as np
import pytest

from palnet import PalnetError
from palnet import ict_landmarks as il
from palnet.resources import default_ict_path

ICT_PATH = default_ict_path()
pytestmark = pytest.mark.skipif(not ICT_PATH.exists(), reason="ICT-FaceKit data not available")

SKIN_STOP = 11248


@pytest.fixture(scope="module")
def ict():
    with np.load(str(ICT_PATH)) as data:
        return {
            "neutral": data["neutral_mm"].astype(np.float64),
            "identity": data["identity_modes_mm"].astype(np.float64),
            "expression": data["expression_modes_mm"].astype(np.float64),
            "names": [str(n) for n in data["expression_names"]],
            "triangles": data["triangles"].astype(np.int64),
        }


def make_head(ict, rng, scale, expression=None):
    w = rng.standard_normal(ict["identity"].shape[0]) * scale
    v = ict["neutral"] + np.tensordot(w, ict["identity"], 1)
    for name, weight in (expression or {}).items():
        v = v + weight * ict["expression"][ict["names"].index(name)]
    return v


def random_heads(ict, n, seed):
    """Identities with weights ~ N(0, s^2), s in 0.7..1.6, half of them with a mild expression."""
    rng = np.random.default_rng(seed)
    choices = [None, {"jawOpen": 0.25}, {"mouthSmile_L": 0.5, "mouthSmile_R": 0.5},
               {"eyeBlink_L": 0.4, "eyeBlink_R": 0.4}, None, None]
    return [make_head(ict, rng, rng.uniform(0.7, 1.6), choices[i % len(choices)])
            for i in range(n)]


def as_dict(points):
    return dict(zip(il.LABELS, points))


def test_fifty_labels_in_protocol_order():
    assert len(il.LABELS) == 50 and len(set(il.LABELS)) == 50
    assert il.LABELS[:12] == ["tr", "g", "n", "prn", "c", "sn", "ls", "sto", "li", "sl", "pg", "me"]
    assert il.LABELS[12:16] == ["ft_R", "ft_L", "os_R", "os_L"]
    assert il.LABELS[-2:] == ["obs_R", "obs_L"]
    for i in range(12, 50, 2):
        assert il.LABELS[i].endswith("_R") and il.LABELS[i + 1] == il.LABELS[i][:-2] + "_L"
    bases = set(il.MIDLINE_NAMES) | set(il.BILATERAL_NAMES)
    assert set(il.DEFINITIONS) == bases


def test_positions_lie_on_the_skin_surface(ict):
    heads = [ict["neutral"]] + random_heads(ict, 4, seed=1)
    tris = ict["triangles"]
    for v in heads:
        pos = il.ict_landmark_positions(v)
        tri, bary = il.ict_landmark_locations(v)
        assert pos.shape == (50, 3) and tri.shape == (50,) and bary.shape == (50, 3)
        assert np.all(tris[tri] < SKIN_STOP), "a landmark sits on a non-skin triangle"
        assert np.all(bary >= 0) and np.allclose(bary.sum(1), 1.0)
        on_triangle = np.einsum("lk,lkd->ld", bary, v[tris[tri]])
        assert np.max(np.linalg.norm(on_triangle - pos, axis=1)) < 1e-6


def test_template_table_is_the_neutral_answer(ict):
    # Every rule's template vertex is what the rule gives on the neutral head: the table
    # documents where each landmark is, and a change of a rule shows up here.
    got = il.ict_landmark_vertices(ict["neutral"])
    tpl = il._template()
    for lab, vid in zip(il.LABELS, got):
        base, side = (lab[:-2], lab[-1]) if lab.endswith(("_R", "_L")) else (lab, None)
        want = il._RULES[base]["vertex"]
        if side == "R":
            want = int(tpl.mirror[want])
        assert vid == want, lab


def test_mirror_symmetry_on_the_neutral_head(ict):
    v = ict["neutral"]
    p = as_dict(il.ict_landmark_positions(v))
    width = np.ptp(v[:SKIN_STOP, 0])
    for name in il.MIDLINE_NAMES:
        assert abs(p[name][0]) < 3.0, name
    for name in il.BILATERAL_NAMES:
        r, l = p[name + "_R"], p[name + "_L"]
        assert r[0] < 0 < l[0], name
        assert abs(r[0] + l[0]) < 0.01 * width, name
        assert np.linalg.norm((r - l)[1:]) < 0.5, name
    assert max(p, key=lambda k: p[k][2] if k in il.MIDLINE_NAMES else -1e9) == "prn"


def test_anatomical_order_on_random_heads(ict):
    # y: tr > g > n > prn > sn > ls > sto > li > sl > pg > me; prn in front of the upper face;
    # sides, widths (ex > en, zy > ex, ...), eye, ear and jaw relations: see the function.
    for v in random_heads(ict, 20, seed=2):
        points = il.ict_landmark_positions(v)
        assert il.anatomical_order_violations(points) == []
        p = as_dict(points)
        for name in il.MIDLINE_NAMES:
            assert abs(p[name][0]) < 3.0, name
        for side in "RL":
            ax = {name: abs(p[name + "_" + side][0]) for name in il.BILATERAL_NAMES}
            assert ax["ft"] > ax["os"] and ax["al"] > ax["sbal"] and ax["go"] > ax["ch"]


def test_order_check_notices_a_broken_face(ict):
    points = il.ict_landmark_positions(ict["neutral"])
    assert il.anatomical_order_violations(points) == []
    p = as_dict(points)
    swapped = points.copy()
    swapped[il.LABELS.index("sto")] = p["li"]
    swapped[il.LABELS.index("li")] = p["sto"]
    swapped[il.LABELS.index("ex_R")] = p["ex_L"]
    bad = il.anatomical_order_violations(swapped)
    assert "sto not above li" in bad and "ex_R on the wrong side" in bad


def test_expressions_move_the_landmarks_that_should_move(ict):
    v = ict["neutral"]
    blink = v + 0.8 * (ict["expression"][ict["names"].index("eyeBlink_L")]
                       + ict["expression"][ict["names"].index("eyeBlink_R")])
    jaw = v + 0.4 * ict["expression"][ict["names"].index("jawOpen")]
    p0, pb, pj = (as_dict(il.ict_landmark_positions(h)) for h in (v, blink, jaw))
    for side in "RL":
        gap0 = p0["ps_" + side][1] - p0["pi_" + side][1]
        gapb = pb["ps_" + side][1] - pb["pi_" + side][1]
        assert gapb < 0.5 * gap0
    assert pj["sto"][1] - pj["li"][1] > p0["sto"][1] - p0["li"][1] + 5.0
    assert pj["me"][1] < p0["me"][1] - 5.0


def test_label_subset_and_errors(ict):
    v = ict["neutral"]
    full = as_dict(il.ict_landmark_positions(v))
    sub = il.ict_landmark_positions(v, ["prn", "ex_L"])
    assert np.allclose(sub, [full["prn"], full["ex_L"]])
    with pytest.raises(PalnetError):
        il.ict_landmark_positions(v, ["nose"])
    with pytest.raises(PalnetError):
        il.ict_landmark_positions(v[:100])


def test_scanned_triangle_mask(ict):
    tris = ict["triangles"]
    skin = il.scanned_triangle_mask(tris, eyeballs=False)
    with_eyes = il.scanned_triangle_mask(tris)
    assert skin.sum() > 20000 and with_eyes.sum() > skin.sum()
    assert np.all(tris[skin] < SKIN_STOP)


def test_fast_enough_for_the_data_generator(ict):
    heads = random_heads(ict, 100, seed=3)
    il.ict_landmark_positions(heads[0])  # template built once, outside the timing
    start = time.perf_counter()
    for v in heads:
        il.ict_landmark_positions(v)
    assert time.perf_counter() - start < 5.0
