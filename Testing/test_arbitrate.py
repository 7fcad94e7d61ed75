"""Never worse than registration: a rule learned on validation answers, applied per landmark."""
import numpy as np
import pytest

from palnet import PalnetError
from palnet.arbitrate import BOTH, NETWORK, REGISTRATION, Rule, combine, learn_rule, rule_from, triggered


def _answers(seed=0, n=40, lm=6):
    """Truth, a network precise on landmarks 0-2 and, on a quarter of the scans, 8 mm off on
    landmarks 3-5 (faces unlike its training), and a registration 1.5 mm off everywhere."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(0, 30, (n, lm, 3))
    net = truth + rng.normal(0, 0.5, truth.shape)
    bad = rng.random(n) < 0.25
    net[bad, 3:] += rng.normal(0, 1, (bad.sum(), 3, 3)) * 8.0
    reg = truth + rng.normal(0, 1.5 / np.sqrt(3), truth.shape)
    spread = np.where(bad[:, None], 2.0, 0.5) + rng.random((n, lm)) * 0.1
    return net, reg, truth, spread, bad


def test_the_rule_keeps_the_network_where_it_is_good_and_falls_back_where_it_is_not():
    net, reg, truth, spread, bad = _answers()
    rule = learn_rule(net, reg, truth, spread)
    # precise there: at most a little of the (independent) registration is mixed in
    assert (rule.weight[:3] <= 0.5).all()
    assert np.isfinite(rule.onset_mm[3:]).all() and (rule.weight[3:] > 0.5).all()
    test_net, test_reg, test_truth, _, test_bad = _answers(seed=1)
    out = np.stack([combine(rule, a, b)[0] for a, b in zip(test_net, test_reg)])
    err = lambda p: np.linalg.norm(p - test_truth, axis=2)  # noqa: E731
    assert err(out)[:, 3:].mean() < err(test_net)[:, 3:].mean()
    assert err(out)[test_bad][:, 3:].mean() < err(test_reg)[test_bad][:, 3:].mean() + 0.5  # near registration
    assert err(out)[~test_bad].mean() < err(test_net)[~test_bad].mean() + 0.05  # good faces keep their answer
    # the trigger: the least sure tenth of the validation faces
    assert triggered(rule, np.full(6, 3.0), "ok") and not triggered(rule, np.full(6, 0.3), "ok")
    assert triggered(rule, np.full(6, 0.3), "low fit")


def test_a_landmark_and_its_mirror_partner_share_one_rule():
    """Landmarks 3 and 4 are a left/right pair: the network fails on 3 alone (it learned one side
    worse). Learned apart, only 3 would lean on the registration, and a mirrored face would get
    the rule on its other side; learned as a pair, both share it."""
    net, reg, truth, spread, bad = _answers()
    net[:, 4] = truth[:, 4] + np.random.default_rng(5).normal(0, 0.5, (len(net), 3))  # 4 precise
    swap = np.array([0, 1, 2, 4, 3, 5])
    apart = learn_rule(net, reg, truth, spread)
    paired = learn_rule(net, reg, truth, spread, swap=swap)
    assert (apart.onset_mm[3], apart.weight[3]) != (apart.onset_mm[4], apart.weight[4])  # apart: one side only
    assert paired.onset_mm[3] == paired.onset_mm[4] and paired.weight[3] == paired.weight[4]
    np.testing.assert_array_equal(paired.onset_mm[[0, 1, 2, 5]], apart.onset_mm[[0, 1, 2, 5]])  # unpaired: as before


def test_sources_say_which_answer_won():
    rule = Rule(1.0, np.array([np.inf, 1.0, 1.0]), np.array([0.0, 1.0, 0.5]))
    net = np.zeros((3, 3))
    reg = np.array([[5.0, 0, 0], [5.0, 0, 0], [5.0, 0, 0]])
    answer, src = combine(rule, net, reg)
    assert src == [NETWORK, REGISTRATION, BOTH]
    np.testing.assert_allclose(answer[:, 0], [0.0, 5.0, 2.5])
    close = np.array([[0.5, 0, 0]] * 3)  # they agree within the onset: the network stays everywhere
    assert combine(rule, net, close)[1] == [NETWORK] * 3
    lost = reg.copy()
    lost[1] = np.nan  # a registration that places a landmark nowhere: the network keeps it
    answer, src = combine(rule, net, lost)
    assert src == [NETWORK, NETWORK, BOTH] and np.isfinite(answer).all()


def test_rule_round_trips_through_metadata_and_bad_rules_are_refused():
    rule = Rule(0.8, np.array([np.inf, 2.0]), np.array([0.0, 0.75]), 12)
    back = rule_from({"arbitration": rule.to_dict()}, 2)
    assert back.trigger_spread_mm == 0.8 and np.isinf(back.onset_mm[0]) and back.weight[1] == 0.75
    for bad in ({"trigger_spread_mm": 1, "onset_mm": [1.0], "weight": [0.5, 0.5]},
                {"trigger_spread_mm": 1, "onset_mm": [1.0, -2.0], "weight": [0.5, 0.5]},
                {"trigger_spread_mm": 1, "onset_mm": [1.0, 2.0], "weight": [0.5, 1.5]},
                {"onset_mm": [1.0, 2.0], "weight": [0.5, 0.5]}):
        with pytest.raises(PalnetError, match="arbitration"):
            rule_from({"arbitration": bad}, 2, "m.npz")
    assert rule_from({}, 2) is None


def test_a_model_with_a_rule_saves_loads_and_reports_sources(tmp_path, model, sample):
    """A rule whose trigger always fires: the registration runs, the landmarks it moves say so."""
    import copy

    from palnet.modelfile import Model, load_model, save_model
    from palnet.pipeline import predict
    n = model.config.n_landmarks
    meta = copy.deepcopy(model.metadata)
    onset = [None] * n
    onset[0] = 0.001  # trichion: always the registration's
    meta["arbitration"] = Rule(0.0, np.array([np.inf if o is None else o for o in onset]),
                               np.array([1.0] + [0.0] * (n - 1)), 3).to_dict()
    path = tmp_path / "arb.npz"
    save_model(path, Model(model.weights, model.config, meta), half=True)
    loaded = load_model(path)
    pred = predict(sample[0], loaded)
    assert pred.sources[0] == REGISTRATION and set(pred.sources[1:]) == {NETWORK}
    assert "registration used for tr" in pred.message
    assert "from registration" in pred.landmarks.descriptions[0]
    plain = predict(sample[0], model)
    assert plain.sources == (NETWORK,) * n
    np.testing.assert_allclose(pred.landmarks.points[1:], plain.landmarks.points[1:])


def test_a_registration_that_fails_leaves_the_network_answer(model, sample, monkeypatch):
    """The registration is a fallback: when it raises (too few points, a singular fit) or returns
    NaN, the prediction still comes, with the network's landmarks."""
    import copy

    from palnet import pipeline
    from palnet.modelfile import Model
    n = model.config.n_landmarks
    meta = copy.deepcopy(model.metadata)
    meta["arbitration"] = Rule(0.0, np.full(n, 0.001), np.ones(n), 3).to_dict()  # always the registration's
    ruled = Model(model.weights, model.config, meta)
    plain = pipeline.predict(sample[0], model)

    def fails(*args):
        raise PalnetError("coherent point drift needs points on both sides (0 source, 0 target)")

    for broken in (fails, lambda samples, template, mean, swap: mean * np.nan):
        monkeypatch.setattr(pipeline, "symmetric_registration", broken)
        pred = pipeline.predict(sample[0], ruled)
        assert pred.sources == (NETWORK,) * n
        np.testing.assert_allclose(pred.landmarks.points, plain.landmarks.points)


def test_a_landmark_some_validation_scans_lack_gets_no_rule():
    """Its validation would rest on the scans that show it (face-only captures lack the ears):
    the network keeps it."""
    net, reg, truth, spread, _ = _answers()
    truth = truth.copy()
    truth[:5, 4] = np.nan  # five scans without landmark 4
    rule = learn_rule(net, reg, truth, spread)
    assert np.isinf(rule.onset_mm[4]) and rule.weight[4] == 0
    assert np.isfinite(rule.onset_mm[[3, 5]]).all()
