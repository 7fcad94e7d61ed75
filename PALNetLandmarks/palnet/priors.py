"""Shape priors and confidence: what a model knows about landmark shapes besides its network.

This module holds the starting shape (landmarks predicted from the fitted face template's shape),
the shape prior that pulls the network's answer towards plausible faces (and the choice between
a broad prior and a narrow one, weighed by how well the narrow one explains the answer), the
mirror relabelling they use, and the confidence table that turns the spread of perturbed runs
into a probability.
Training fits each of them here (from training scans and held-out answers) and prediction reads
them back from the model's metadata; NumPy only, so both sides use the same code.
"""
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .errors import PalnetError
from .modelfile import Model

MODES_RIDGE = 1.0  # penalty on the landmark modes (the coefficients are about 1 for a typical face)
MODES_MIN_SCANS_PER_COEFFICIENT = 3  # fewer training scans than this per unknown: keep the mean start
PRIOR_MIN_VALIDATION = 5  # validation scans needed to measure the network's error for the shape prior


# ---------------------------------------------------------------- mirror images

def mirror_pairs(labels) -> Optional[np.ndarray]:
    """Index that swaps each ``_R`` landmark with its ``_L`` partner (midline ones stay), or None
    when the protocol has an unpaired side landmark."""
    labels = list(labels)
    index = {lab: i for i, lab in enumerate(labels)}
    swap = np.arange(len(labels))
    for i, lab in enumerate(labels):
        if lab.endswith(("_R", "_L")):
            other = lab[:-1] + ("L" if lab.endswith("_R") else "R")
            if other not in index:
                return None
            swap[i] = index[other]
    return swap


def model_swap(model: Model) -> Optional[np.ndarray]:
    """:func:`mirror_pairs` of the model's protocol, or None when it has no usable labels."""
    labels = model.metadata.get("protocol", {}).get("labels")
    if not labels or len(labels) != model.config.n_landmarks:
        return None
    return mirror_pairs(labels)


FLIP = np.array([-1.0, 1.0, 1.0])  # the canonical frame's mirror: its x axis runs across the face
# The mean landmarks of a model trained on faces are nearly their own mirror image (the shipped
# model's: 0.31 mm on average, 0.41 at most); the steps that average a scan's answer with its
# mirror image's assume so, and are left out for a model whose mean is further off than this.
SYMMETRIC_MEAN_MM = 5.0


def mirror_landmarks(points: np.ndarray, swap: np.ndarray) -> np.ndarray:
    """Landmarks (..., L, 3) of the mirror image (x -> -x in the canonical frame), relabelled."""
    return points[..., swap, :] * FLIP


def symmetric_swap(mean: np.ndarray, swap: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """``swap`` when the mean landmarks ``mean`` are their own mirror image, relabelled, within
    SYMMETRIC_MEAN_MM; else None (a protocol whose sides the model does not place as mirror images)."""
    if swap is None:
        return None
    off = np.linalg.norm(mirror_landmarks(np.asarray(mean, dtype=np.float64), swap) - mean, axis=1)
    return swap if off.size and float(off.max()) <= SYMMETRIC_MEAN_MM else None


# ---------------------------------------------------------------- the starting shape

def complete(scans: Sequence) -> List:
    """The scans that show every landmark (shape statistics are learned from these only). A scan
    here is anything with ``truth`` (L, 3; NaN where it lacks a landmark) and ``shape`` (the
    fitted template's K mode coefficients), as dataset.TrainingScan."""
    return [s for s in scans if np.isfinite(s.truth).all()]


def landmark_modes(model: Model) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(mean shape coefficients (K,), mean landmarks (L, 3), landmark modes (K, L, 3)) when the
    model learned how its landmarks move with the face template's fitted shape (see
    :func:`starting_shape` and :func:`fit_landmark_modes`), else None."""
    entry = model.metadata.get("landmark_modes")
    if not entry:
        return None
    n = model.config.n_landmarks
    try:
        coef_mean = np.asarray(entry["coef_mean"], dtype=np.float64).reshape(-1)
        landmark_mean = np.asarray(entry["landmark_mean"], dtype=np.float64).reshape(n, 3)
        modes = np.asarray(entry["modes"], dtype=np.float64).reshape(len(coef_mean), n, 3)
    except (KeyError, TypeError, ValueError) as exc:
        raise PalnetError("model metadata has unusable landmark_modes ({})".format(exc), model.source)
    if not all(np.isfinite(a).all() for a in (coef_mean, landmark_mean, modes)):
        raise PalnetError("model metadata has landmark_modes with NaN or infinite values", model.source)
    return coef_mean, landmark_mean, modes


def starting_shape(mean: np.ndarray, shape: np.ndarray,
                   modes: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """Where the network starts, canonical mm: the landmarks as the fitted face template's shape
    (``shape``, its mode coefficients) places them, when the model learned that (``modes`` from
    :func:`landmark_modes`); else the training scans' mean landmarks ``mean``, as in the paper."""
    if modes is None or len(shape) != len(modes[0]):
        return mean
    return modes[1] + np.tensordot(np.asarray(shape, dtype=np.float64) - modes[0], modes[2], 1)


def symmetric_start(mean: np.ndarray, shape: np.ndarray, mirror_shape: Optional[np.ndarray],
                    modes: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]],
                    swap: Optional[np.ndarray]) -> np.ndarray:
    """Where the network starts, the same for a face and its mirror image: half the start from
    the template's shape fitted to the scan (:func:`starting_shape`), half the mirror image of
    the start from the shape fitted to the scan's mirror image (``mirror_shape``, see
    ``align.Alignment``). The template, the mean landmarks and the learned modes are not quite
    symmetric, so the two starts differ (by up to a few tenths of a mode coefficient); from
    either, the network could end a few mm apart on the ears. The start of the scan's mirror
    image is then exactly the mirror image of this one. Without ``mirror_shape`` or mirror pairs
    (``swap``): :func:`starting_shape`."""
    start = starting_shape(mean, shape, modes)
    if mirror_shape is None or swap is None or len(mirror_shape) != len(shape):
        return start
    return 0.5 * (start + mirror_landmarks(starting_shape(mean, mirror_shape, modes), swap))


def fit_landmark_modes(scans: Sequence, ridge: float = MODES_RIDGE) -> Optional[dict]:
    """How the landmarks (canonical mm) move with the face template's fitted shape: a ridge
    regression of every scan's true landmarks on its template mode coefficients, as
    ``{"coef_mean": (K,), "landmark_mean": (L, 3), "modes": (K, L, 3)}`` (see
    :func:`starting_shape`), or None when the template has no modes or there are too few
    scans to learn K x L x 3 numbers."""
    scans = complete(scans)
    k = {len(s.shape) for s in scans}
    if len(k) != 1 or not next(iter(k)):
        return None
    k = next(iter(k))
    if len(scans) < MODES_MIN_SCANS_PER_COEFFICIENT * (k + 1):
        return None
    x = np.stack([s.shape for s in scans]).astype(np.float64)
    y = np.stack([s.truth for s in scans]).reshape(len(scans), -1)
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    modes = np.linalg.solve(xc.T @ xc + ridge * np.eye(k), xc.T @ yc)
    return {"coef_mean": np.round(x.mean(axis=0), 6).tolist(),
            "landmark_mean": np.round(y.mean(axis=0).reshape(-1, 3), 4).tolist(),
            "modes": np.round(modes.reshape(k, -1, 3), 5).tolist()}


# ---------------------------------------------------------------- the shape prior

def shape_prior(model: Model, entry: Optional[dict] = None) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(mean landmarks (L, 3), the network's bias (L, 3), gain (3L, 3L)) of the model's landmark
    shape prior (see :func:`apply_shape_prior` and :func:`fit_shape_prior`), or None. ``entry``:
    another prior record of the model than its first (the second round's)."""
    entry = model.metadata.get("shape_prior") if entry is None else entry
    if not entry:
        return None
    n = model.config.n_landmarks
    try:
        mean = np.asarray(entry["mean"], dtype=np.float64).reshape(n, 3)
        bias = np.asarray(entry.get("bias", np.zeros((n, 3))), dtype=np.float64).reshape(n, 3)
        gain = np.asarray(entry["gain"], dtype=np.float64).reshape(3 * n, 3 * n)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PalnetError("model metadata has an unusable shape_prior ({})".format(exc), model.source)
    if not all(np.isfinite(a).all() for a in (mean, bias, gain)):
        raise PalnetError("model metadata has a shape_prior with NaN or infinite values", model.source)
    return mean, bias, gain


def second_round(model: Model) -> Optional[Tuple[int, Tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """(refinement passes, shape prior) of the model's second round (see pipeline.network_answer), or None."""
    entry = model.metadata.get("second_round")
    if not entry:
        return None
    try:
        steps = int(entry["refine_steps"])
        prior = shape_prior(model, entry["shape_prior"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PalnetError("model metadata has an unusable second_round ({})".format(exc), model.source)
    if steps < 1 or prior is None:
        raise PalnetError("model metadata has an unusable second_round (needs refine_steps >= 1 and a shape_prior)",
                          model.source)
    return steps, prior


def apply_shape_prior(points: np.ndarray, prior: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]],
                      swap: Optional[np.ndarray] = None, missing: Optional[np.ndarray] = None) -> np.ndarray:
    """The most probable landmarks (canonical mm) given the network's answer ``points`` (L, 3):
    the training landmarks' spread (a Gaussian, mean and covariance S) combined with the
    network's error on held-out scans (its mean, the bias, taken off the answer; the rest a
    Gaussian with covariance N), i.e. ``mean + S (S + N)^-1 (points - bias - mean)``; the model
    stores the gain S (S + N)^-1. A landmark the network places precisely keeps its place; one
    it places loosely (a cheek's most lateral point) moves towards where the others say it lies.

    ``swap`` (see :func:`mirror_pairs`): the prior applied to the answer and to its mirror image,
    averaged, so that mirrored answers stay mirrored. ``missing`` (L,): landmarks the scan does not
    show; the network's answer there (on the nearest rim) says nothing, so each is replaced by the
    place the prior itself gives it from the others (the fixed point x_M = prior(x)_M, a small
    linear solve), and it no longer pulls the landmarks the scan does show."""
    if prior is None:
        return points
    mean, bias, gain = prior

    def fix(p: np.ndarray, gone: Optional[np.ndarray]) -> np.ndarray:
        if gone is not None and gone.any():
            p = _fill_missing(p, mean, bias, gain, gone)
        return mean + ((p - bias - mean).reshape(-1) @ gain.T).reshape(mean.shape)

    if swap is None:
        return fix(points, missing)
    flipped = None if missing is None else missing[swap]
    return 0.5 * (fix(points, missing) + mirror_landmarks(fix(mirror_landmarks(points, swap), flipped), swap))


def _fill_missing(points: np.ndarray, mean: np.ndarray, bias: np.ndarray, gain: np.ndarray,
                  missing: np.ndarray) -> np.ndarray:
    """``points`` with the missing landmarks where the prior puts them given the others: the x_M
    that solves x_M = mean_M + G_MM (x_M - b_M - mean_M) + G_MO (x_O - b_O - mean_O)."""
    m = np.repeat(np.asarray(missing, bool), 3)
    d = (points - bias - mean).reshape(-1)
    g_mm, g_mo = gain[np.ix_(m, m)], gain[np.ix_(m, ~m)]
    rhs = mean.reshape(-1)[m] - g_mm @ (bias + mean).reshape(-1)[m] + g_mo @ d[~m]
    try:
        x_m = np.linalg.solve(np.eye(int(m.sum())) - g_mm, rhs)
    except np.linalg.LinAlgError:  # not for a prior's gain (eigenvalues below 1); a model built in code
        return points
    out = points.reshape(-1).copy()
    out[m] = x_m
    return out.reshape(points.shape)


def _shrunk_covariance(y: np.ndarray) -> Tuple[np.ndarray, float]:
    """Covariance of the rows of ``y`` shrunk towards its diagonal, and the shrinkage: the
    Ledoit-Wolf estimate on the standardised columns, so that a few dozen scans (fewer than
    the 3L numbers per scan) still give a usable, invertible estimate."""
    x = y - y.mean(axis=0)
    sd = np.maximum(x.std(axis=0), 1e-9)
    z = x / sd
    n, p = z.shape
    corr = z.T @ z / n
    target = np.eye(p)
    d2 = ((corr - target) ** 2).sum()
    # sum over rows of |z z^T - corr|^2, which is sum |z|^4 - n |corr|^2 since corr is their mean
    b2 = (((z ** 2).sum(axis=1) ** 2).sum() - n * (corr ** 2).sum()) / n ** 2
    alpha = float(min(b2, d2) / d2) if d2 > 0 else 1.0
    shrunk = (1 - alpha) * corr + alpha * target
    return shrunk * np.outer(sd, sd) * n / max(n - 1, 1), alpha


def fit_shape_prior(train_scans: Sequence, answers: np.ndarray, truths: np.ndarray,
                    covariance: bool = False) -> Optional[dict]:
    """The landmark shape prior :func:`apply_shape_prior` uses, or None with fewer than
    PRIOR_MIN_VALIDATION validation scans or 2 training scans.

    The training scans' landmarks are a Gaussian (mean, covariance S shrunk as
    ``_shrunk_covariance`` says). The network's errors on the validation scans (``answers``
    against ``truths``) give its systematic offset (the bias; zero unless it is clearly more than
    chance would give from that many scans, and shrunk by that) and the covariance N of the
    rest (errors of neighbouring landmarks go together; shrunk likewise). Stored: the mean,
    the bias and the gain S (S + N)^-1; with ``covariance``, also S + N, the spread of the
    network's answers around the mean (see :func:`choice_weight`)."""
    # Shape statistics come from scans that show every landmark.
    train_scans = complete(train_scans)
    whole = np.isfinite(np.asarray(truths)).reshape(len(truths), -1).all(axis=1)
    answers, truths = np.asarray(answers)[whole], np.asarray(truths)[whole]
    if len(answers) < PRIOR_MIN_VALIDATION or len(train_scans) < 2:
        return None
    y = np.stack([s.truth for s in train_scans]).reshape(len(train_scans), -1).astype(np.float64)
    cov, alpha = _shrunk_covariance(y)
    err = (np.asarray(answers, dtype=np.float64) - np.asarray(truths)).reshape(len(answers), -1)
    m, mean_err = len(err), err.mean(axis=0)
    # kept where it is clearly more than chance (twice its standard error), shrunk by what chance would give
    bias = mean_err * np.clip(1 - 4 * err.var(axis=0) / (m * np.maximum(mean_err ** 2, 1e-12)), 0, 1)
    noise, beta = _shrunk_covariance(err)
    noise += np.outer(mean_err - bias, mean_err - bias)  # the offset left in the answers
    noise += np.eye(len(noise)) * 1e-4
    gain = np.linalg.solve(cov + noise, cov).T  # S (S + N)^-1, both symmetric
    entry = {"mean": np.round(y.mean(axis=0).reshape(-1, 3), 4).tolist(),
             "bias": np.round(bias.reshape(-1, 3), 4).tolist(), "gain": np.round(gain, 6).tolist(),
             "n_train": len(train_scans), "n_validation": m, "shrinkage": round(alpha, 4),
             "noise_shrinkage": round(beta, 4),
             "noise_rms_mm": round(float(np.sqrt(np.trace(noise) / len(noise) * 3)), 4)}
    if covariance:
        entry["covariance"] = np.round(cov + noise, 4).tolist()
    return entry


# ---------------------------------------------------------------- the choice between two priors

def prior_choice(model: Model):
    """(first-round prior, second-round prior or None, covariance (3L, 3L), threshold, width) of
    the model's second, narrower shape prior (``prior_choice`` in its metadata), or None.

    A model fine-tuned on faces beyond the head model's identity modes learns a broad prior from
    them; on faces within those modes a prior learned on them alone is sharper (the shipped
    model: 1.673 -> 1.585 mm on plain test faces) and worse beyond them (2.036 -> 2.226 mm). The
    network's first answer tells which a scan is (:func:`choice_weight`)."""
    entry = model.metadata.get("prior_choice")
    if not entry:
        return None
    n = model.config.n_landmarks
    try:
        first = shape_prior(model, entry["shape_prior"])
        second = shape_prior(model, entry["second_round"]) if entry.get("second_round") else None
        cov = np.asarray(entry["shape_prior"]["covariance"], dtype=np.float64).reshape(3 * n, 3 * n)
        threshold, width = float(entry["threshold"]), float(entry["width"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PalnetError("model metadata has an unusable prior_choice ({})".format(exc), model.source)
    if not (np.isfinite(cov).all() and np.isfinite(threshold) and np.isfinite(width) and width > 0):
        raise PalnetError("model metadata has a prior_choice with NaN, infinite or non-positive values", model.source)
    return first, second, cov, threshold, width


def choice_distance(points: np.ndarray, prior: Tuple[np.ndarray, np.ndarray, np.ndarray], cov: np.ndarray,
                    missing: Optional[np.ndarray] = None) -> float:
    """How unlike the narrow prior's faces the network's answer ``points`` (L, 3) is: its squared
    Mahalanobis distance from the prior's mean (the bias taken off) under ``cov`` (S + N), per
    coordinate, over the landmarks the scan shows (about 1 for a face like the prior's)."""
    mean, bias, _ = prior
    shown = np.ones(len(points), bool) if missing is None else ~np.asarray(missing, bool)
    keep = np.repeat(shown, 3)
    z = (points - bias - mean).reshape(-1)[keep]
    if not z.size or not np.isfinite(z).all():
        return float("inf")
    try:
        return float(z @ np.linalg.solve(cov[np.ix_(keep, keep)], z)) / z.size
    except np.linalg.LinAlgError:
        return float("inf")


def choice_score(points: np.ndarray, choice, swap: Optional[np.ndarray] = None) -> float:
    """:func:`choice_distance` of the answer ``points`` (every landmark shown) from the narrow
    prior of ``choice`` (as :func:`prior_choice` gives it); with ``swap``, the mean of the
    answer's and its mirror image's, so that a face and its mirror image score alike."""
    first, _, cov, _, _ = choice
    d = choice_distance(points, first, cov)
    if swap is not None:
        d = 0.5 * (d + choice_distance(mirror_landmarks(points, swap), first, cov))
    return d


def choice_weight(points: np.ndarray, choice, swap: Optional[np.ndarray] = None,
                  missing: Optional[np.ndarray] = None) -> float:
    """The weight (0 to 1) of the narrow prior for the network's first answer ``points``: 1 for a
    face it explains as well as the faces it was learned on, falling to 0 past ``threshold``
    (a logistic step of ``width``) of :func:`choice_score`."""
    _, _, _, threshold, width = choice
    if missing is not None and np.any(missing):
        return 0.0  # learned on scans that show every landmark: a partial scan keeps the broad prior
    d = choice_score(points, choice, swap)
    if not np.isfinite(d):
        return 0.0
    return float(1.0 / (1.0 + np.exp(np.clip((d - threshold) / width, -50.0, 50.0))))


# ---------------------------------------------------------------- confidence

def calibrate_confidence(spread_mm: np.ndarray, error_mm: np.ndarray, bins: int = 12) -> dict:
    """Table for :func:`landmark_confidence` from held-out (spread, error) pairs: the
    fraction of landmarks within 2 mm of the truth in each spread quantile, made
    non-increasing so that a larger spread never means more confidence."""
    spread_mm, error_mm = np.ravel(spread_mm), np.ravel(error_mm)
    known = np.isfinite(spread_mm) & np.isfinite(error_mm)  # a missing landmark has no error
    spread_mm, error_mm = spread_mm[known], error_mm[known]
    bins = max(1, min(bins, spread_mm.size))
    edges = np.quantile(spread_mm, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, spread_mm, side="right") - 1, 0, bins - 1)
    used = [b for b in range(bins) if np.any(which == b)]  # tied spreads can leave a bin empty
    centres = np.array([np.median(spread_mm[which == b]) for b in used])
    p = np.array([np.mean(error_mm[which == b] <= 2.0) for b in used])
    p = np.minimum.accumulate(p)
    return {"spread_mm": [round(float(x), 4) for x in centres], "p_within_2mm": [round(float(x), 4) for x in p],
            "n": int(spread_mm.size)}


def landmark_confidence(spread_mm: np.ndarray, model: Model) -> np.ndarray:
    """Confidence in [0, 1] from the spread of perturbed predictions.

    A calibrated model carries a table mapping spread to the observed chance that a
    landmark lies within 2 mm of the truth; without one, 1 / (1 + spread / 1 mm).
    """
    table = model.metadata.get("confidence")
    if not table:
        return np.clip(1.0 / (1.0 + spread_mm), 0.0, 1.0)
    try:
        conf = np.interp(spread_mm, table["spread_mm"], table["p_within_2mm"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PalnetError("model metadata has an unusable confidence table ({})".format(exc), model.source) from None
    # load_model checks the table, but a Model built in code is not loaded: a probability either way.
    return np.clip(conf, 0.0, 1.0)
