"""Training internals on small random data: loss, batches, resumable checkpoints, misaligned scans."""
import numpy as np
import pytest

pytest.importorskip("torch")

from palnet import PalnetError  # noqa: E402
from palnet.dataset import TrainingScan  # noqa: E402
from palnet.train import drop_misaligned, fit, make_batch, merge_config  # noqa: E402


def _scans(n, seed=0, labels=5):
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 30, (labels, 3))
    scans = []
    for i in range(n):
        truth = base + rng.normal(0, 2, base.shape)
        samples = (truth[:, None] + rng.normal(0, 6, (labels, 150, 3))).reshape(-1, 3).astype(np.float32)
        scans.append(TrainingScan("s{}".format(i), samples, truth, 2.0))
    return scans


def _cfg(epochs):
    return merge_config({"network": {"patch_size": 100, "fc": 8}, "epochs": epochs, "batch_size": 4,
                         "refine_steps": 1})


def test_unknown_setting_is_refused():
    with pytest.raises(PalnetError):
        merge_config({"learning_rate": 1})
    with pytest.raises(PalnetError, match="copys"):
        merge_config({"augment": {"copys": 2}})
    assert merge_config({"augment": {"copies": 2}})["augment"]["spikes"] == 0.01


def test_batches_are_jittered_only_when_asked():
    from scipy.spatial import cKDTree
    scans = _scans(3)
    trees = [cKDTree(s.samples) for s in scans]
    mean = np.mean([s.truth for s in scans], axis=0)
    cfg = _cfg(1)
    p1, i1, t1 = make_batch(scans, trees, np.arange(3), mean, cfg, None)
    p2, i2, t2 = make_batch(scans, trees, np.arange(3), mean, cfg, None)
    assert p1.shape == (3, 5, 100, 3) and np.array_equal(p1, p2) and np.array_equal(t1, t2)
    p3, i3, t3 = make_batch(scans, trees, np.arange(3), mean, cfg, np.random.default_rng(1))
    assert not np.allclose(p1, p3)
    # a jitter turns truths and starting points together: their distances stay
    d_true = np.linalg.norm(t1[:, 0] - t1[:, 1], axis=1)
    d_turned = np.linalg.norm(t3[:, 0] - t3[:, 1], axis=1)
    np.testing.assert_allclose(d_true, d_turned, rtol=1e-5)


def test_near_starts_begin_by_the_truth_not_the_mean():
    """near_fraction of the starts are what a refinement pass sees: landmarks a few mm off
    the truth; the others start from the (jittered) mean shape."""
    from scipy.spatial import cKDTree
    scans = _scans(40, labels=5)
    for s in scans:  # every scan far from the mean shape, so the two kinds of start differ
        s.truth = s.truth + 25.0
        s.samples = s.samples + np.float32(25.0)
    trees = [cKDTree(s.samples) for s in scans]
    mean = np.mean([s.truth for s in scans], axis=0) - 25.0
    idx = np.arange(40)

    def start_error(fraction):
        cfg = merge_config({"network": {"patch_size": 20}, "jitter": {"near_fraction": fraction, "near_mm": 3.0,
                                                                       "rotate_deg": 0.0}})
        _, inits, truths = make_batch(scans, trees, idx, mean, cfg, np.random.default_rng(0))
        return np.linalg.norm(inits - truths, axis=2).mean(axis=1)

    assert start_error(0.0).min() > 20.0
    near = start_error(1.0)
    assert near.max() < 12.0 and near.mean() < 6.0
    mixed = start_error(0.5)
    assert 8 <= (mixed < 15.0).sum() <= 32  # about half of them
    assert merge_config(None)["jitter"]["near_fraction"] == 0.5


def test_checkpoint_resumes_the_same_run_only(tmp_path):
    labels = ["a", "b", "c", "d", "e"]
    scans = _scans(8)
    tpl = np.zeros((10, 3))
    ck = tmp_path / "run.ckpt"
    logs = []
    fit(scans[:6], scans[6:], labels, tpl, _cfg(1), {}, checkpoint=ck, log=logs.append)
    assert ck.exists()
    model = fit(scans[:6], scans[6:], labels, tpl, _cfg(2), {}, checkpoint=ck, log=logs.append)
    assert any("resumed" in line for line in logs)
    assert [r["epoch"] for r in model.metadata["training_history"]] == [1, 2]
    with pytest.raises(PalnetError) as info:
        fit(_scans(8, seed=5)[:5], scans[6:], labels, tpl, _cfg(3), {}, checkpoint=ck, log=logs.append)
    assert str(ck) in str(info.value)


def test_each_epoch_is_an_event_and_a_log_line_made_from_it():
    """fit hands each epoch to on_epoch as a dict (what palnet train --events prints) and logs the
    human line formatted from that dict."""
    from palnet.train import epoch_line
    scans = _scans(8)
    logs, events = [], []
    model = fit(scans[:6], scans[6:], ["a", "b", "c", "d", "e"], np.zeros((10, 3)), _cfg(2), {}, log=logs.append,
                on_epoch=events.append)
    history = model.metadata["training_history"]
    assert [{k: v for k, v in e.items() if k != "best"} for e in events] == history and len(history) == 2
    assert events[0]["best"] is True and all(type(e["best"]) is bool for e in events)
    assert [line for line in logs if line.startswith("epoch")] == [epoch_line(e) for e in events]
    assert epoch_line({"epoch": 3, "loss": 11.206, "val_pointwise_mm": 8.607, "val_distancewise_mm": 6.237, "lr": 0.001,
                       "seconds": 0.8, "best": False}) == \
        "epoch   3  loss 11.206  val point-wise 8.607 mm  distance-wise 6.237 mm  lr 0.001  0.8 s"
    assert epoch_line(dict(events[0], best=True)).endswith("  *")


def test_misaligned_scans_are_left_out():
    scans = _scans(10)
    scans[3] = TrainingScan("flipped", scans[3].samples, -scans[3].truth + 200, 6.0)
    kept, dropped = drop_misaligned(scans)
    assert dropped == ["flipped"] and len(kept) == 9


def test_final_validation_scores_what_predict_answers():
    """The report's validation is the error of the answers palnet predict gives (the mean of
    the perturbed runs), not of the single run each epoch is judged by."""
    from scipy.spatial import cKDTree
    from palnet.metrics import pointwise_errors
    from palnet.patches import initial_approximation
    from palnet.pipeline import predict_with_spread, run_network
    from palnet.train import evaluate_scans, validate
    scans = _scans(6)
    cfg = _cfg(1)
    model = fit(scans[:4], scans[4:], list("abcde"), np.zeros((10, 3)), cfg, {}, log=lambda line: None)
    trees = [cKDTree(s.samples) for s in scans[4:]]
    mean = np.asarray(model.metadata["mean_landmarks"])
    scale, steps = cfg["patch"]["scale_mm"], cfg["refine_steps"]
    truths = np.stack([s.truth for s in scans[4:]])
    starts = [initial_approximation(t, mean) for t in trees]
    answers = np.stack([predict_with_spread(t, model, x, steps, scale)[0] for t, x in zip(trees, starts)])
    single = np.stack([run_network(t, model, x[None], steps, scale)[0] for t, x in zip(trees, starts)])
    assert not np.allclose(answers, single)
    errors, table = validate(model, scans[4:], trees, mean, cfg)
    assert errors["pointwise_mm"] == pytest.approx(pointwise_errors(answers, truths).mean())
    assert evaluate_scans(model, scans[4:], trees, mean, cfg, steps)["pointwise_mm"] == \
        pytest.approx(pointwise_errors(single, truths).mean())
    assert table["n"] == 2 * 5 and len(table["spread_mm"]) == len(table["p_within_2mm"])
    assert np.isfinite(table["spread_mm"]).all() and np.isfinite(table["p_within_2mm"]).all()


def test_confidence_table_from_few_or_tied_spreads_has_no_gaps():
    """Fewer landmarks than bins (a small protocol, two validation scans) or tied spreads used
    to leave empty bins, whose NaN then made every confidence NaN."""
    from palnet.priors import calibrate_confidence
    for spread in (np.linspace(0.1, 1.0, 10), np.r_[np.zeros(30), np.linspace(0.5, 3.0, 20)]):
        error = spread * 2.5
        table = calibrate_confidence(spread, error)
        assert np.isfinite(table["spread_mm"]).all() and np.isfinite(table["p_within_2mm"]).all()
        assert np.all(np.diff(table["p_within_2mm"]) <= 0) and table["p_within_2mm"][0] == 1.0
    rng = np.random.default_rng(0)
    spread = rng.gamma(2.0, 0.5, 5000)
    table = calibrate_confidence(spread, spread * rng.uniform(0.5, 2.0, 5000))
    assert len(table["spread_mm"]) == 12  # plenty of distinct spreads: every bin is used


def _shaped_scans(n, k=3, labels=5, seed=0):
    """Scans whose landmarks follow their template shape coefficients linearly (plus 0.2 mm noise)."""
    rng = np.random.default_rng(seed)
    base, modes = rng.normal(0, 30, (labels, 3)), rng.normal(0, 4, (k, labels, 3))
    scans = []
    for i in range(n):
        coef = rng.normal(0, 1, k)
        truth = base + np.tensordot(coef, modes, 1) + rng.normal(0, 0.2, base.shape)
        samples = (truth[:, None] + rng.normal(0, 6, (labels, 150, 3))).reshape(-1, 3).astype(np.float32)
        scans.append(TrainingScan("s{}".format(i), samples, truth, 2.0, shape=coef))
    return scans, base, modes


def test_landmark_modes_learn_how_landmarks_follow_the_fitted_face():
    from palnet.priors import fit_landmark_modes
    from palnet.train import scan_starts
    scans, base, modes = _shaped_scans(60)
    learned = fit_landmark_modes(scans)
    np.testing.assert_allclose(np.asarray(learned["modes"]), modes, rtol=0.05, atol=0.1)  # ridge shrinks them a little
    truths = np.stack([s.truth for s in scans])
    mean = truths.mean(axis=0)
    starts = scan_starts(scans, mean, {"landmark_modes": learned})
    assert np.linalg.norm(starts - truths, axis=2).mean() < 0.5 < np.linalg.norm(mean - truths, axis=2).mean()
    # nothing to learn from: no template modes, mixed mode counts, or too few scans per unknown
    assert fit_landmark_modes(_scans(60)) is None
    assert fit_landmark_modes(scans[:11]) is None
    scans[0].shape = np.zeros(2)
    assert fit_landmark_modes(scans) is None
    # without landmark modes every scan starts from the mean
    assert np.array_equal(scan_starts(scans[:3], mean, {}), np.stack([mean] * 3))


def test_training_stores_landmark_modes_unless_told_to_start_from_the_mean():
    scans, _, _ = _shaped_scans(40)
    labels, tpl = list("abcde"), np.zeros((10, 3))
    model = fit(scans[:36], scans[36:], labels, tpl, _cfg(1), {}, log=lambda line: None)
    assert np.asarray(model.metadata["landmark_modes"]["modes"]).shape == (3, 5, 3)
    paper = fit(scans[:36], scans[36:], labels, tpl, merge_config(dict(_cfg(1), start="mean")), {},
                log=lambda line: None)
    assert "landmark_modes" not in paper.metadata
    # fine-tuning on too few scans to learn them keeps the model's own
    tuned = fit(scans[:6], scans[36:], labels, tpl, _cfg(1), {}, init_model=model, log=lambda line: None)
    assert tuned.metadata["landmark_modes"] == model.metadata["landmark_modes"]


def test_shape_prior_pulls_noisy_landmarks_towards_the_training_shapes():
    """Landmarks that move together (here 4 hidden factors) let the precisely placed ones
    correct a loosely placed one; the prior's gain comes from the training shapes and the
    network's error on validation scans."""
    from palnet.priors import apply_shape_prior, fit_shape_prior
    rng = np.random.default_rng(0)
    base, modes = rng.normal(0, 30, (6, 3)), rng.normal(0, 3, (4, 6, 3))

    def faces(n):
        return base + np.tensordot(rng.normal(0, 1, (n, 4)), modes, 1)

    train = [TrainingScan("s{}".format(i), np.zeros((1, 3), np.float32), t, 1.0) for i, t in enumerate(faces(300))]
    noise_mm = np.array([0.3, 0.3, 0.3, 0.3, 0.3, 4.0])[:, None]  # the network places landmark 5 loosely
    val = faces(40)
    answers = val + rng.normal(0, 1, val.shape) * noise_mm
    prior = fit_shape_prior(train, answers, val)
    assert prior["n_validation"] == 40 and 0 <= prior["shrinkage"] < 0.2
    gain = np.asarray(prior["gain"])
    test = faces(50)
    noisy = test + rng.normal(0, 1, test.shape) * noise_mm
    fixed = np.stack([apply_shape_prior(a, (np.asarray(prior["mean"]), np.asarray(prior["bias"]), gain))
                      for a in noisy])
    before, after = (np.linalg.norm(x - test, axis=2).mean(axis=0) for x in (noisy, fixed))
    assert after[5] < 0.5 * before[5], (before, after)
    assert after[:5].mean() < before[:5].mean() + 0.05
    # too few validation scans to measure the network's error: no prior
    assert fit_shape_prior(train, answers[:4], val[:4]) is None
    # a network that places landmark 0 2 mm off along x on every scan: the offset comes off the answer...
    shifted = answers.copy()
    shifted[:, 0, 0] += 2.0
    bias = np.asarray(fit_shape_prior(train, shifted, val)["bias"])
    assert abs(bias[0, 0] - 2.0) < 0.2 and np.abs(bias[1:5]).max() < 0.1  # (landmark 5 is too noisy to judge)
    assert (np.abs(bias) <= np.abs((shifted - val).mean(axis=0)) + 1e-9).all()
    # ...while the chance offsets of a few validation scans are shrunk towards zero
    few = np.asarray(fit_shape_prior(train, answers[:6], val[:6])["bias"])
    raw = np.abs((answers[:6] - val[:6]).mean(axis=0))
    assert (np.abs(few) <= raw + 1e-9).all() and np.abs(few).sum() < 0.8 * raw.sum()


def test_shrinkage_grows_as_the_training_set_shrinks():
    from palnet.priors import _shrunk_covariance
    rng = np.random.default_rng(1)
    mix = rng.normal(0, 1, (30, 30))
    alphas = [_shrunk_covariance(rng.normal(0, 1, (n, 30)) @ mix)[1] for n in (1000, 100, 15)]
    assert alphas[0] < alphas[1] < alphas[2] <= 1.0
    cov, _ = _shrunk_covariance(rng.normal(0, 1, (15, 30)) @ mix)  # fewer scans than numbers per scan
    assert np.linalg.eigvalsh(cov).min() > 0


def test_landmarks_a_scan_lacks_teach_nothing_and_break_nothing():
    """A face-only capture's training file marks its ear points missing (NaN): the loss skips
    them, the epoch runs, the priors and modes learn from the scans that show everything."""
    import torch

    from palnet.priors import fit_shape_prior
    from palnet.train import _loss
    pred = torch.zeros((2, 3, 3), requires_grad=True)
    truth = torch.tensor([[[1.0, 0, 0], [float("nan")] * 3, [0, 1.0, 0]], [[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]]])
    loss, point, dist = _loss(torch, pred, truth, [0.6, 0.4])
    assert torch.isfinite(loss) and abs(point.item() - 1.0) < 1e-6  # mean over the 5 known points
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[0, 1].abs().sum() == 0
    scans, _, _ = _shaped_scans(40)
    for s in scans[:5]:
        s.truth = s.truth.copy()
        s.truth[1] = np.nan
    model = fit(scans[:36], scans[36:], list("abcde"), np.zeros((10, 3)), _cfg(1), {}, log=lambda line: None)
    assert np.isfinite(np.asarray(model.metadata["mean_landmarks"])).all()
    answers = np.stack([s.truth for s in scans]) + 0.5
    prior = fit_shape_prior(scans[:30], answers[30:], np.stack([s.truth for s in scans[30:]]))
    assert prior is not None and np.isfinite(np.asarray(prior["gain"])).all() and prior["n_train"] == 25
