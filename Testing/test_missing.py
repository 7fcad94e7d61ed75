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
    assert pred.status == "low fit" and label in pred.message and "hole" in pred.message
    conf = dict(zip(pred.landmarks.labels, pred.landmarks.confidence))
    assert conf[label] == 0.0
    assert min(c for lab, c in conf.items() if lab != label) > 0.0


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
