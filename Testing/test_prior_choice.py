"""Two shape priors, a broad one (faces beyond the head model's modes) and a narrow one (plain
faces): the network's first answer says which explains the scan, and the two are weighed by it."""
import copy
import sys
from pathlib import Path

import numpy as np
import pytest

from palnet import PalnetError
from palnet.modelfile import Model, load_model, save_model
from palnet.priors import choice_distance, choice_weight, mirror_landmarks, mirror_pairs, prior_choice

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def _gaussian(seed=0, n=6):
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 1, (3 * n, 3 * n))
    cov = a @ a.T / (3 * n) + np.eye(3 * n)
    mean = rng.normal(0, 20, (n, 3))
    bias = rng.normal(0, 0.5, (n, 3))
    return mean, bias, cov


def test_the_distance_is_about_one_per_coordinate_for_answers_the_prior_explains():
    mean, bias, cov = _gaussian()
    prior = (mean, bias, np.eye(len(cov)))
    rng = np.random.default_rng(1)
    draws = rng.multivariate_normal((mean + bias).ravel(), cov, 2000).reshape(-1, *mean.shape)
    d = np.array([choice_distance(x, prior, cov) for x in draws])
    assert 0.95 < d.mean() < 1.05
    assert choice_distance(mean + bias + 30.0, prior, cov) > 10  # far from every face it knows
    missing = np.zeros(len(mean), bool)
    missing[2] = True  # over the landmarks shown: the rest of the answer says nothing
    wild = draws[0].copy()
    wild[2] += 1000.0
    assert choice_distance(wild, prior, cov, missing) < 10 < choice_distance(wild, prior, cov)
    assert choice_distance(np.full(mean.shape, np.nan), prior, cov) == float("inf")


def _choice(mean, bias, cov, threshold=1.0, width=0.05):
    return (mean, bias, np.eye(len(cov))), None, cov, threshold, width


def test_the_weight_goes_from_the_narrow_prior_to_the_broad_one_past_the_threshold():
    mean, bias, cov = _gaussian()
    choice = _choice(mean, bias, cov)
    assert choice_weight(mean + bias, choice) > 0.99
    assert choice_weight(mean + bias + 30.0, choice) < 0.01
    missing = np.zeros(len(mean), bool)
    missing[0] = True
    assert choice_weight(mean + bias, choice, missing=missing) == 0.0  # a partial scan keeps the broad prior
    assert choice_weight(np.full(mean.shape, np.nan), choice) == 0.0


def test_a_face_and_its_mirror_image_get_the_same_weight(model):
    labels = model.metadata["protocol"]["labels"]
    swap = mirror_pairs(labels)
    choice = prior_choice(model)
    first = choice[0]
    answer = first[0] + first[1] + np.random.default_rng(2).normal(0, 1.5, first[0].shape)
    answer[:, 0] += 1.0  # not symmetric itself
    w, w_mirror = choice_weight(answer, choice, swap), choice_weight(mirror_landmarks(answer, swap), choice, swap)
    assert abs(w - w_mirror) < 1e-12


def _with_choice(model, **change):
    meta = copy.deepcopy(model.metadata)
    meta["prior_choice"] = dict(meta["prior_choice"], **change)
    return Model(model.weights, model.config, meta)


def test_the_weight_picks_the_prior_in_both_rounds(model, sample):
    """Threshold 0: the broad prior alone, as a model without the choice; a threshold no answer
    reaches: the narrow prior alone, in both rounds."""
    from palnet.patches import initial_approximation
    from palnet.pipeline import model_arrays, network_answer, prepare_scan, template_modes
    from palnet.priors import landmark_modes, starting_shape
    template, mean, spacing, scale = model_arrays(model)
    prep = prepare_scan(sample[0], template, mean, spacing, "auto", template_modes(template))
    init = initial_approximation(prep.tree, starting_shape(mean, prep.alignment.shape, landmark_modes(model)))
    steps = model.metadata["refine_steps"]
    meta = copy.deepcopy(model.metadata)
    meta.pop("prior_choice")
    broad_only = network_answer(prep.tree, Model(model.weights, model.config, meta), init, steps, scale)[0]
    broad = network_answer(prep.tree, _with_choice(model, threshold=0.0, width=1e-6), init, steps, scale)[0]
    np.testing.assert_allclose(broad, broad_only)
    narrow_model = _with_choice(model, threshold=1e6)
    narrow = network_answer(prep.tree, narrow_model, init, steps, scale)[0]
    assert np.abs(narrow - broad).max() > 0.05  # the two priors differ
    shipped = network_answer(prep.tree, model, init, steps, scale)[0]
    truth = prep.alignment.to_canonical(sample[1].points)
    err = {k: np.linalg.norm(v - truth, axis=1).mean() for k, v in (("narrow", narrow), ("broad", broad),
                                                                     ("shipped", shipped))}
    assert err["shipped"] <= err["broad"] + 0.05, err  # the sample is plain: the narrow prior serves it


def test_a_model_with_a_prior_choice_saves_loads_and_bad_ones_are_refused(tmp_path, model):
    path = tmp_path / "m.npz"
    save_model(path, model, half=True)
    back = prior_choice(load_model(path))
    np.testing.assert_allclose(back[2], prior_choice(model)[2])
    for change, field in ((dict(threshold=float("nan")), "prior_choice.threshold"),
                          (dict(width=0.0), "prior_choice.width"),
                          (dict(shape_prior=dict(model.metadata["prior_choice"]["shape_prior"], covariance=[[1.0]])),
                           "prior_choice.shape_prior.covariance")):
        with pytest.raises(PalnetError, match=field.replace(".", r"\.")):
            save_model(tmp_path / "bad.npz", _with_choice(model, **change))
    meta = copy.deepcopy(model.metadata)
    meta["prior_choice"] = {"threshold": 1.0, "width": 0.05}
    with pytest.raises(PalnetError, match="prior_choice"):
        save_model(tmp_path / "bad.npz", Model(model.weights, model.config, meta))


def test_the_threshold_is_the_switch_that_errs_least():
    sys.path.insert(0, str(TOOLS))
    import learn_prior_choice
    d = np.array([0.2, 0.4, 0.6, 0.8, 1.5, 3.0])
    broad = np.array([1.0, 1.0, 1.0, 1.0, 2.0, 3.0])
    narrow = np.array([0.8, 0.8, 0.8, 0.9, 2.5, 4.0])  # better on the faces it explains, worse beyond
    threshold, score = learn_prior_choice.best_threshold(d, broad, narrow)
    assert 0.8 < threshold < 1.5
    assert score == pytest.approx(np.mean([0.8, 0.8, 0.8, 0.9, 2.0, 3.0]))
