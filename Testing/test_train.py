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


def test_misaligned_scans_are_left_out():
    scans = _scans(10)
    scans[3] = TrainingScan("flipped", scans[3].samples, -scans[3].truth + 200, 6.0)
    kept, dropped = drop_misaligned(scans)
    assert dropped == ["flipped"] and len(kept) == 9
