"""Anatomical order: an answer with the upper lip's point below the stomion is reported, whatever
the network's spread says, and the fewest landmarks that restore the order are placed where the
rest of the face puts them (or where the template registration does)."""
import numpy as np
import pytest

from palnet import pipeline
from palnet.anatomy import (ORDER_TOLERANCE_MM, OutOfOrder, describe_out_of_order, order_pairs, out_of_order,
                            out_of_order_labels, restore_order)
from palnet.priors import FLIP, mirror_landmarks, model_swap


@pytest.fixture(scope="module")
def labels(model):
    return list(model.metadata["protocol"]["labels"])


@pytest.fixture(scope="module")
def mean(model):
    return pipeline.model_arrays(model)[1]


def test_the_chains_order_the_lips_eyes_and_ears_of_both_sides_once(labels):
    pairs = [(labels[a], labels[b]) for a, b in order_pairs(labels)]
    assert len(pairs) == len(set(pairs))
    for upper, lower in (("ls", "sto"), ("sto", "li"), ("n", "me"), ("ps_R", "pi_R"), ("ps_L", "pi_L"),
                         ("sa_L", "sba_L"), ("cph_R", "sto"), ("sn", "cph_L")):
        assert (upper, lower) in pairs
    assert ("ps_R", "pi_L") not in pairs and ("sto", "ls") not in pairs


def test_the_mean_face_is_in_order_and_a_lip_point_below_the_stomion_is_not(labels, mean):
    assert out_of_order(labels, mean) == []
    moved = mean.copy()
    ls, sto = labels.index("ls"), labels.index("sto")
    moved[ls, 1] = mean[sto, 1] - 4.0  # the upper lip's point 4 mm below the stomion
    found = out_of_order(labels, moved)
    assert [(o.upper, o.lower) for o in found][0] == ("ls", "sto")
    assert found[0].by_mm == pytest.approx(4.0)
    assert set(out_of_order_labels(found)) >= {"ls", "sto"}
    # within the tolerance it passes; a missing landmark (NaN) is not judged
    moved[ls, 1] = mean[sto, 1] - ORDER_TOLERANCE_MM * 0.5
    assert out_of_order(labels, moved) == []
    moved[ls, 1] = mean[sto, 1] - 4.0
    moved[sto] = np.nan
    assert all("sto" not in (o.upper, o.lower) for o in out_of_order(labels, moved))


def test_a_protocol_with_some_of_the_chain_is_checked_on_the_rest(mean, labels):
    keep = [labels.index(n) for n in ("sn", "sto", "me")]
    pts = mean[keep].copy()
    pts[2, 1] = pts[0, 1] + 5.0  # menton above subnasale
    found = out_of_order(["sn", "sto", "me"], pts)
    assert {(o.upper, o.lower) for o in found} == {("sn", "me"), ("sto", "me")}
    assert out_of_order(["a", "b"], np.zeros((2, 3))) == []


def test_the_message_names_the_worst_pairs_and_counts_the_rest():
    """A scrambled answer breaks dozens of pairs; the message (one line in the Slicer panel) stays short."""
    found = [OutOfOrder("tr", "me", 80.0), OutOfOrder("ls", "sto", 4.0), OutOfOrder("n", "sn", 3.0),
             OutOfOrder("ps_R", "pi_R", 2.5), OutOfOrder("sa_L", "t_L", 2.1)]
    text = describe_out_of_order(found)
    assert text.startswith("out of anatomical order: tr 80.0 mm below me, ls 4.0 mm below sto")
    assert "ps_R" not in text and "and 2 more pairs" in text
    assert "more" not in describe_out_of_order(found[:3]) and describe_out_of_order([]) == ""


def test_the_fewest_stand_ins_that_restore_the_order_are_taken(labels, mean):
    """The network put the upper lip's point on the lower lip: that point is wrong, not the
    stomion or the lower lip's point below it, which keep the network's answer."""
    ls, li = labels.index("ls"), labels.index("li")
    answer = mean.copy()
    answer[ls] = mean[li]
    repaired, taken = restore_order(labels, answer, mean)
    assert out_of_order(labels, repaired) == []
    assert [labels[k] for k in np.flatnonzero(taken)] == ["ls"]
    np.testing.assert_array_equal(repaired[~taken], answer[~taken])
    np.testing.assert_array_equal(repaired[ls], mean[ls])
    unchanged, none = restore_order(labels, mean, answer)  # nothing out of order: nothing taken
    assert not none.any() and np.array_equal(unchanged, mean)


def test_of_as_many_stand_ins_the_one_the_face_disagrees_with_most_is_taken(labels, mean):
    """The upper eyelid's point below the lower one: a stand-in for either would restore the
    order here, and the one whose answer lies farthest from its stand-in (the misplaced one) is taken."""
    ps, pi = labels.index("ps_R"), labels.index("pi_R")
    answer = mean.copy()
    answer[ps] = mean[pi] - np.array([0.0, 2.5, 0.0])
    other = mean.copy()
    other[pi] -= np.array([0.0, 1.0, 0.0])  # its lower lid 1 mm lower: enough to restore the order too
    repaired, taken = restore_order(labels, answer, other)
    assert [labels[k] for k in np.flatnonzero(taken)] == ["ps_R"]
    assert out_of_order(labels, repaired) == []


def test_stand_ins_that_break_the_order_again_bring_in_the_next_landmark():
    """Taken for the pair out of order, a stand-in can break the order with a third landmark:
    that one is then taken too, and of all so taken the fewest that restore the order are kept."""
    labels = ["ls", "sto", "li"]
    answer = np.array([[0.0, -5.0, 0.0], [0.0, 0.0, 0.0], [0.0, -3.0, 0.0]])  # ls 5 mm below sto
    other = np.array([[0.0, -4.0, 0.0], [0.0, -6.0, 0.0], [0.0, -10.0, 0.0]])
    repaired, taken = restore_order(labels, answer, other)
    assert taken.tolist() == [False, True, True]  # no single stand-in restores it; sto and li do
    assert out_of_order(labels, repaired) == []
    masks = []

    def placing(mask):  # a stand-in that depends on which landmarks it places (the shape prior)
        masks.append(mask.copy())
        return np.where(mask[:, None], other, np.nan)

    repaired, taken = restore_order(labels, answer, placing)
    assert taken.tolist() == [False, True, True] and masks[-1].tolist() == [False, True, True]
    np.testing.assert_array_equal(repaired, [answer[0], other[1], other[2]])


def test_an_answer_upside_down_is_not_patched_up_by_a_few_stand_ins(labels, mean):
    """The prior places a few landmarks from the others; a face misread as a whole breaks the order
    everywhere, and the caller's limit (pipeline.MOST_FILLED) leaves it to the registration."""
    flipped = mean * np.array([1.0, -1.0, 1.0])
    repaired, taken = restore_order(labels, flipped, mean)
    assert taken.sum() > pipeline.MOST_FILLED and out_of_order(labels, repaired) == []
    kept, none = restore_order(labels, flipped, mean, most=pipeline.MOST_FILLED)
    assert not none.any() and np.array_equal(kept, flipped)


def test_no_stand_in_that_breaks_the_order_too_or_lacks_the_landmark(labels, mean):
    ls, sto = labels.index("ls"), labels.index("sto")
    answer = mean.copy()
    answer[ls, 1] = mean[sto, 1] - 4.0
    kept, taken = restore_order(labels, answer, answer)  # the alternative as wrong as the answer
    assert not taken.any() and np.array_equal(kept, answer)
    lacking = mean.copy()
    lacking[ls] = np.nan
    kept, taken = restore_order(labels, answer, lacking)
    assert not taken.any() and np.array_equal(kept, answer)


def test_the_registration_does_not_hang_on_the_last_digits_of_the_samples(model, sample):
    """A mirror image's pose differs from the mirror of the pose by rounding errors; the
    registration must not turn them into millimetres (it once moved fran_cut's lips by 4 mm)."""
    template, mean, spacing, _ = pipeline.model_arrays(model)
    prep = pipeline.prepare_scan(sample[0], template, mean, spacing, "auto", pipeline.template_modes(template))
    swap = model_swap(model)
    reg = pipeline.symmetric_registration(prep.samples, template, mean, swap)
    noisy = prep.samples + np.random.default_rng(5).normal(scale=1e-9, size=prep.samples.shape)
    np.testing.assert_allclose(pipeline.symmetric_registration(noisy, template, mean, swap), reg, atol=1e-5)


def test_the_registration_is_the_same_for_a_face_and_its_mirror_image(model, sample):
    """Its CPD thinning and the template are not symmetric; the mean with the mirror image's is."""
    template, mean, spacing, _ = pipeline.model_arrays(model)
    prep = pipeline.prepare_scan(sample[0], template, mean, spacing, "auto", pipeline.template_modes(template))
    swap = model_swap(model)
    reg = pipeline.symmetric_registration(prep.samples, template, mean, swap)
    mirrored = pipeline.symmetric_registration(prep.samples * FLIP, template, mean, swap)
    np.testing.assert_allclose(mirror_landmarks(mirrored, swap), reg, atol=1e-9)
    shuffled = prep.samples[np.random.default_rng(3).permutation(len(prep.samples))]
    np.testing.assert_allclose(pipeline.symmetric_registration(shuffled, template, mean, swap), reg, atol=1e-9)
    truth = prep.alignment.to_canonical(sample[1].points)
    assert np.nanmean(np.linalg.norm(reg - truth, axis=1)) < 5.0  # a registration, not noise


def test_predict_stands_in_for_landmarks_out_of_order_with_a_low_confidence(model, sample, labels, monkeypatch):
    """The upper lip's point below the stomion: placed where the rest of the face puts it (the
    shape prior), the stomion kept; a model without a prior takes the registration's answer."""
    real = pipeline.network_answer
    reference = pipeline.predict(sample[0], model)
    ls, sto = labels.index("ls"), labels.index("sto")

    def swapped(*args, **kwargs):
        answer, spread = real(*args, **kwargs)
        answer = answer.copy()
        answer[ls, 1] = answer[sto, 1] - 5.0
        return answer, spread

    monkeypatch.setattr(pipeline, "network_answer", swapped)
    pred = pipeline.predict(sample[0], model)
    assert "ls" in pred.out_of_order and "sto" in pred.out_of_order
    assert "the network's answer out of anatomical order (ls" in pred.message
    assert "ls placed where the other landmarks put it" in pred.message
    sources = dict(zip(labels, pred.sources))
    assert sources["ls"] == "others" and sources["sto"] == sources["prn"] == "network"
    conf = dict(zip(labels, pred.landmarks.confidence))
    assert conf["ls"] <= pipeline.OUT_OF_ORDER_CONFIDENCE and conf["sto"] <= pipeline.OUT_OF_ORDER_CONFIDENCE
    assert "from the other landmarks, the network's answer out of anatomical order" in pred.landmarks.descriptions[ls]
    assert "anatomical order" not in pred.landmarks.descriptions[labels.index("prn")]
    truth = dict(zip(labels, sample[1].points))
    points = dict(zip(labels, pred.landmarks.points))
    assert np.linalg.norm(points["ls"] - truth["ls"]) < 3.0  # back on the upper lip
    np.testing.assert_allclose(points["sto"], dict(zip(labels, reference.landmarks.points))["sto"], atol=1e-6)

    # A model without a shape prior: the registration stands in.
    monkeypatch.setattr(pipeline, "order_fill", lambda model, missing: None)
    pred = pipeline.predict(sample[0], model)
    assert "registration used for ls" in pred.message
    assert dict(zip(labels, pred.sources))["ls"] == "registration"
    assert "from registration, the network's answer out of anatomical order" in pred.landmarks.descriptions[ls]
    assert np.linalg.norm(dict(zip(labels, pred.landmarks.points))["ls"] - truth["ls"]) < 6.0

    # A registration that breaks the order too changes nothing: the pairs are reported, the network's answer stays.
    monkeypatch.setattr(pipeline, "symmetric_registration", lambda samples, template, mean, swap: mean * np.nan)
    kept = pipeline.predict(sample[0], model)
    assert "out of anatomical order: ls" in kept.message and "registration used" not in kept.message
    assert dict(zip(labels, kept.sources))["ls"] == "network"
    assert "; out of anatomical order" in kept.landmarks.descriptions[ls]
    monkeypatch.setattr(pipeline, "network_answer", real)
    plain = pipeline.predict(sample[0], model)
    assert plain.out_of_order == () and "anatomical order" not in plain.message


def test_an_answer_that_snapping_puts_out_of_order_is_repaired_too(model, sample, labels, monkeypatch):
    """On a coarse scan (fran_cut: 4.4 mm between vertices) snapping can move a point several mm:
    the order is checked again on what the user sees, and where the rest of the face puts the
    landmark (or, without a shape prior, the registration's answer), snapped alike, stands in
    where that restores it."""
    li = labels.index("li")
    plain = pipeline.predict(sample[0], model)
    assert plain.units == "mm" and plain.out_of_order == ()
    pose = plain.alignment
    real = pipeline.snap_to_surface
    calls = []

    def dropping(mesh, points, method, tree=None):
        out = real(mesh, points, method, tree=tree)
        if not calls:  # the first snap, of the network's answer: li falls 15 mm down the face
            out = out.copy()
            out[li] = pose.to_scan(pose.to_canonical(out[li][None]) - np.array([0.0, 15.0, 0.0]))[0]
        calls.append(len(points))
        return out

    monkeypatch.setattr(pipeline, "snap_to_surface", dropping)
    pred = pipeline.predict(sample[0], model)
    assert calls == [len(labels), 1]  # the answer, then the stand-in where the others put li
    sources = dict(zip(labels, pred.sources))
    assert sources["li"] == "others" and sources["prn"] == sources["sl"] == "network"
    assert "li" in pred.out_of_order and "li placed where the other landmarks put it" in pred.message
    assert pipeline.out_of_order(labels, pred.alignment.to_canonical(pred.landmarks.points)) == []
    conf = dict(zip(labels, pred.landmarks.confidence))
    assert conf["li"] <= pipeline.OUT_OF_ORDER_CONFIDENCE
    assert np.linalg.norm(pred.landmarks.points[li] - plain.landmarks.points[li]) < 3.0

    calls.clear()  # a model without a shape prior: the registration's answer, snapped alike
    monkeypatch.setattr(pipeline, "order_fill", lambda model, missing: None)
    pred = pipeline.predict(sample[0], model)
    assert len(calls) == 2 and dict(zip(labels, pred.sources))["li"] == "registration"
    assert "registration used for" in pred.message

    calls.clear()  # and a registration that fails: nothing replaced, the pair reported
    monkeypatch.setattr(pipeline, "symmetric_registration", lambda samples, template, mean, swap: mean * np.nan)
    kept = pipeline.predict(sample[0], model)
    assert dict(zip(labels, kept.sources))["li"] == "network"
    assert "out of anatomical order:" in kept.message and "li" in kept.out_of_order
