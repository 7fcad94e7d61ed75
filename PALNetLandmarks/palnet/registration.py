"""Template registration: Coherent Point Drift of a template point set onto a scan's surface.

The affine (Myronenko & Song, "Point Set Registration: Coherent Point Drift", IEEE TPAMI
32(12), 2010, its Fig. 3) and non-rigid (its Fig. 4) algorithms, the latter with the low-rank
approximation of the Gaussian kernel matrix of its Section 5. For speed each scan point's
posteriors may be truncated to its nearest template points (``neighbours``); None computes them
all. Coordinates are millimetres: ``beta`` is in mm and ``lam`` multiplies sigma^2 (mm^2) in the
M-step, so it is in 1/mm^2.

Used by baseline (b) (:mod:`palnet.baselines`) and by the prediction's arbitration
(:mod:`palnet.arbitrate`): this module knows nothing of models or the pipeline.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.spatial import cKDTree

from .geometry import grid_means, grid_subsample
from .errors import PalnetError


@dataclass
class RegistrationSettings:
    """Template registration settings; the defaults were chosen on synthetic scans
    (20 held-out ICT-FaceKit scans, see tools/benchmark.py --baselines)."""

    beta: float = 40.0            # mm: width of the kernel that keeps the motion coherent
    lam: float = 0.01             # 1/mm^2: weight of that coherence
    w: float = 0.2                # expected fraction of scan samples the template does not explain
    sigma2: float = 100.0         # mm^2 at the start: the scan is rigidly aligned already
    min_sigma2: float = 1.0       # mm^2: keeps the fit from collapsing onto single samples
    affine_iterations: int = 30
    iterations: int = 30          # non-rigid EM iterations
    tolerance: float = 1e-5
    rank: Optional[int] = 80      # eigenvectors of the kernel matrix; None: exact solve
    neighbours: Optional[int] = 64  # template points each scan sample's posterior spans; None: all
    source_spacing: float = 6.0   # mm between template points
    target_points: int = 2500     # scan samples the template is registered to, about ...
    target_margin: float = 15.0   # ... taken within this distance (mm) of the template


DEFAULT_SETTINGS = RegistrationSettings()


@dataclass
class CPDResult:
    """A non-rigid CPD fit: ``moved = source + G(source, source) @ weights``
    (G in its low-rank form when the fit used one)."""

    source: np.ndarray   # (M, 3) the points that were registered
    moved: np.ndarray    # (M, 3) where they went
    weights: np.ndarray  # (M, 3) W of the paper
    beta: float
    sigma2: float        # final variance of the mixture components, mm^2
    iterations: int
    converged: bool

    def transform(self, points: np.ndarray) -> np.ndarray:
        """Move any points with the fitted displacement field v(z) = sum_m g(z - y_m) w_m."""
        z = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return z + gaussian_kernel(z, self.source, self.beta) @ self.weights


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) squared Euclidean distances, never negative."""
    d = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0, out=d)


def gaussian_kernel(a: np.ndarray, b: np.ndarray, beta: float) -> np.ndarray:
    """g(a_i - b_j) = exp(-|a_i - b_j|^2 / (2 beta^2))."""
    d = squared_distances(a, b)
    d *= -0.5 / (beta * beta)
    return np.exp(d, out=d)


def low_rank_eigen(g: np.ndarray, rank: int, oversample: int = 10, power_iterations: int = 2,
                   seed: int = 0):
    """The ``rank`` largest eigenpairs (values, vectors) of a symmetric PSD matrix.

    A randomised range finder with power iterations (Halko, Martinsson & Tropp
    2011): for the smooth Gaussian kernels CPD uses the spectrum falls fast, and this
    costs a few matrix products instead of a full eigendecomposition.
    """
    m = g.shape[0]
    k = min(m, rank + oversample)
    q = np.linalg.qr(g @ np.random.default_rng(seed).standard_normal((m, k)))[0]
    for _ in range(power_iterations):
        q = np.linalg.qr(g @ q)[0]
    values, vectors = np.linalg.eigh(q.T @ g @ q)
    top = np.argsort(values)[::-1][:rank]
    return np.maximum(values[top], 0.0), q @ vectors[:, top]


def _posteriors_dense(t: np.ndarray, x: np.ndarray, sigma2: float, c: float):
    """(P1, P^T 1, P X, per-target normaliser) with the full M x N posterior matrix."""
    p = squared_distances(t, x)
    p *= -0.5 / sigma2
    np.exp(p, out=p)
    den = np.maximum(p.sum(axis=0) + c, np.finfo(float).tiny)
    p /= den
    return p.sum(axis=1), p.sum(axis=0), p @ x, den


class _NearestSources:
    """For each target point, its ``k`` nearest moved source points.

    A k-d tree query per EM iteration would cost as much as the dense E-step, yet
    the source moves little between iterations: the lists are queried again only
    once some source point has moved ``refresh`` mm since the last query. Points that
    could swap into a list then lie near the k-th distance, where posteriors vanish.
    """

    def __init__(self, target: np.ndarray, k: int, refresh: float = 2.0):
        self.target, self.k, self.refresh = target, k, refresh
        self.reference = None  # type: Optional[np.ndarray]
        self.index = None  # type: Optional[np.ndarray]

    def __call__(self, moved: np.ndarray) -> np.ndarray:
        if self.reference is None or self.reference.shape != moved.shape or \
                np.abs(moved - self.reference).max() > self.refresh:
            self.index = cKDTree(moved).query(self.target, k=self.k)[1].reshape(len(self.target), self.k)
            self.reference = moved.copy()
        return self.index


def _posteriors_nearest(t: np.ndarray, x: np.ndarray, sigma2: float, c: float, idx: np.ndarray):
    """The same with each target point's posteriors truncated to the source points ``idx``
    (N, k), its nearest: the terms left out are the smallest of each column, and vanish
    (below exp(-r^2 / 2 sigma^2) for the k-th distance r) once sigma is small."""
    m = len(t)
    diff = t[idx] - x[:, None, :]
    e = np.exp(np.einsum("nki,nki->nk", diff, diff) * (-0.5 / sigma2))
    den = np.maximum(e.sum(axis=1) + c, np.finfo(float).tiny)
    e /= den[:, None]
    flat_idx = idx.ravel()
    p1 = np.bincount(flat_idx, e.ravel(), minlength=m)
    px = np.stack([np.bincount(flat_idx, (e * x[:, j:j + 1]).ravel(), minlength=m) for j in range(3)], axis=1)
    return p1, e.sum(axis=1), px, den


def _nearest_sources(x: np.ndarray, m: int, neighbours: Optional[int]) -> Optional[_NearestSources]:
    """Truncated posteriors when ``neighbours`` is set and smaller than the source; else None (dense)."""
    if neighbours is None or int(neighbours) >= m:
        return None
    return _NearestSources(x, max(1, int(neighbours)))


def _initial_sigma2(y: np.ndarray, x: np.ndarray) -> float:
    """The paper's starting variance: the mean squared distance over all pairs / D."""
    m, n = len(y), len(x)
    return float((n * (y * y).sum() + m * (x * x).sum() - 2.0 * (y.sum(0) @ x.sum(0))) / (3 * m * n))


def _e_step(t: np.ndarray, x: np.ndarray, sigma2: float, w: float, nearest: Optional[_NearestSources]):
    """Posterior sums of one E-step and the negative log-likelihood (up to a constant)."""
    m, n = len(t), len(x)
    c = (2.0 * np.pi * sigma2) ** 1.5 * w / (1.0 - w) * m / n
    if nearest is None:
        p1, pt1, px, den = _posteriors_dense(t, x, sigma2, c)
    else:
        p1, pt1, px, den = _posteriors_nearest(t, x, sigma2, c, nearest(t))
    return p1, pt1, px, -np.log(den).sum() + n * 1.5 * np.log(sigma2)


def affine_coherent_point_drift(source: np.ndarray, target: np.ndarray, w: float = DEFAULT_SETTINGS.w,
                                max_iterations: int = 50, tolerance: float = DEFAULT_SETTINGS.tolerance,
                                neighbours: Optional[int] = None, sigma2: Optional[float] = None,
                                min_sigma2: float = 1e-8):
    """Affine CPD (the paper's Fig. 3): ``(B, t, sigma2)`` with ``target ~ source @ B.T + t``.

    ``sigma2`` None starts from the paper's initial variance, which lets the fit
    see the whole target at first; a scan already aligned is better started near
    the expected residual, since from afar a curved partial surface can pull the
    affine map flat.
    """
    y = np.ascontiguousarray(source, dtype=np.float64).reshape(-1, 3)
    x = np.ascontiguousarray(target, dtype=np.float64).reshape(-1, 3)
    if len(y) < 4 or len(x) < 4:
        raise PalnetError("affine point drift needs 4 points on each side ({} source, {} target)".format(len(y), len(x)))
    if not (0.0 <= w < 1.0):
        raise PalnetError("outlier weight w must be in [0, 1), not {!r}".format(w))
    min_sigma2 = max(float(min_sigma2), 1e-10)
    sigma2 = max(_initial_sigma2(y, x) if sigma2 is None else float(sigma2), min_sigma2)
    xx = (x * x).sum(axis=1)
    nearest = _nearest_sources(x, len(y), neighbours)
    b, tr = np.eye(3), np.zeros(3)
    previous = np.inf
    for _ in range(max_iterations):
        t = y @ b.T + tr
        p1, pt1, px, objective = _e_step(t, x, sigma2, w, nearest)
        if abs(previous - objective) <= tolerance * abs(objective):
            break
        previous = objective
        n_p = p1.sum()
        if n_p < 1e-12:
            break
        mu_x = pt1 @ x / n_p
        mu_y = p1 @ y / n_p
        yc = y - mu_y
        a = (px - p1[:, None] * mu_x).T @ yc          # X^T P^T Y, centred
        yy = (p1[:, None] * yc).T @ yc                  # Y^T d(P1) Y, centred
        try:
            b = np.linalg.solve(yy.T, a.T).T            # a @ inv(yy)
        except np.linalg.LinAlgError:
            break  # the matched source points span no volume: keep the last map
        tr = mu_x - b @ mu_y
        sigma2 = (pt1 @ xx - n_p * mu_x @ mu_x - np.trace(a @ b.T)) / (n_p * 3)
        sigma2 = max(float(sigma2), min_sigma2)
    return b, tr, sigma2


def coherent_point_drift(source: np.ndarray, target: np.ndarray, beta: float = DEFAULT_SETTINGS.beta,
                         lam: float = DEFAULT_SETTINGS.lam, w: float = DEFAULT_SETTINGS.w,
                         max_iterations: int = 100, tolerance: float = DEFAULT_SETTINGS.tolerance,
                         rank: Optional[int] = None, neighbours: Optional[int] = None,
                         sigma2: Optional[float] = None, min_sigma2: float = 1e-8) -> CPDResult:
    """Non-rigid Coherent Point Drift: deform ``source`` (M, 3) onto ``target`` (N, 3).

    The moved source points are the centroids of a Gaussian mixture (plus a
    uniform outlier component of weight ``w``) fitted to the target by EM, with
    the displacement field regularised to move coherently (Gaussian kernel of
    width ``beta``, weight ``lam``). ``rank`` (< M) uses the K-largest-eigenvector
    approximation of the kernel matrix; None solves the full M x M system each
    iteration. Stops when the relative change of the objective is below
    ``tolerance``. ``sigma2`` None starts from the paper's initial variance.
    """
    y = np.ascontiguousarray(source, dtype=np.float64).reshape(-1, 3)
    x = np.ascontiguousarray(target, dtype=np.float64).reshape(-1, 3)
    m, n = len(y), len(x)
    if m < 1 or n < 1:
        raise PalnetError("coherent point drift needs points on both sides ({} source, {} target)".format(m, n))
    if not (0.0 <= w < 1.0):
        raise PalnetError("outlier weight w must be in [0, 1), not {!r}".format(w))
    dim = 3
    min_sigma2 = max(float(min_sigma2), 1e-10)
    sigma2 = max(_initial_sigma2(y, x) if sigma2 is None else float(sigma2), min_sigma2)
    g = gaussian_kernel(y, y, beta)
    low_rank = rank is not None and rank < m
    if low_rank:
        eig_values, eig_vectors = low_rank_eigen(g, int(rank))
        inv_values = 1.0 / np.maximum(eig_values, 1e-12 * eig_values.max(initial=1.0))
    xx = (x * x).sum(axis=1)
    nearest = _nearest_sources(x, len(y), neighbours)
    wts = np.zeros((m, dim))
    gw = np.zeros((m, dim))
    t = y.copy()
    previous = np.inf
    converged = False
    it = 0
    for it in range(1, max_iterations + 1):
        # E-step: posterior P[m, n] that target point n came from moved source point m;
        # the objective adds the coherence penalty to the negative log-likelihood.
        p1, pt1, px, objective = _e_step(t, x, sigma2, w, nearest)
        objective += lam / 2.0 * float((wts * gw).sum())
        if abs(previous - objective) <= tolerance * abs(objective):
            converged = True
            break
        previous = objective
        n_p = p1.sum()
        if n_p < 1e-12:
            break  # every target point is an outlier: nothing to fit
        # M-step: (G + lam sigma2 d(P1)^-1) W = d(P1)^-1 P X - Y, multiplied through by d(P1).
        s = lam * sigma2
        rhs = px - p1[:, None] * y
        if low_rank:
            # Woodbury with G ~ Q L Q^T: W = (rhs - d(P1) Q (s L^-1 + Q^T d(P1) Q)^-1 Q^T rhs) / s.
            dq = p1[:, None] * eig_vectors
            inner = s * np.diag(inv_values) + eig_vectors.T @ dq
            wts = (rhs - dq @ np.linalg.solve(inner, eig_vectors.T @ rhs)) / s
            gw = eig_vectors @ (eig_values[:, None] * (eig_vectors.T @ wts))
        else:
            wts = np.linalg.solve(p1[:, None] * g + s * np.eye(m), rhs)
            gw = g @ wts
        t = y + gw
        sigma2 = (pt1 @ xx - 2.0 * (px * t).sum() + p1 @ (t * t).sum(axis=1)) / (n_p * dim)
        sigma2 = max(float(sigma2), min_sigma2)
    return CPDResult(y, t, wts, float(beta), float(sigma2), it, converged)


def register_template(samples: np.ndarray, template: np.ndarray, mean: np.ndarray,
                      mean_face: Optional[np.ndarray] = None, affine: Optional[bool] = None,
                      settings: Optional[RegistrationSettings] = None, seed: int = 0) -> np.ndarray:
    """The mean landmarks ``mean`` carried by CPD of ``template`` (or ``mean_face``) onto the
    scan's surface ``samples`` (all canonical mm, the scan rigidly aligned already): (L, 3)."""
    cfg = settings or DEFAULT_SETTINGS
    surface = template if mean_face is None else np.asarray(mean_face, dtype=np.float64).reshape(-1, 3)
    source = np.vstack([grid_subsample(surface, cfg.source_spacing), mean])
    near = np.isfinite(cKDTree(source).query(samples, distance_upper_bound=cfg.target_margin)[0])
    target = subsample(samples[near] if near.sum() >= 10 else samples, cfg.target_points, seed)
    use_affine = mean_face is not None if affine is None else bool(affine)
    if use_affine:
        b, t, _ = affine_coherent_point_drift(source, target, w=cfg.w, max_iterations=cfg.affine_iterations,
                                              tolerance=cfg.tolerance, neighbours=cfg.neighbours,
                                              sigma2=cfg.sigma2, min_sigma2=cfg.min_sigma2)
        source = source @ b.T + t
    fit = coherent_point_drift(source, target, beta=cfg.beta, lam=cfg.lam, w=cfg.w, max_iterations=cfg.iterations,
                               tolerance=cfg.tolerance, rank=cfg.rank, neighbours=cfg.neighbours,
                               sigma2=cfg.sigma2, min_sigma2=cfg.min_sigma2)
    return fit.moved[-len(mean):]


# Grid cells tried by subsample, in mm: a fixed ladder, so that a point moved by a rounding error
# changes the cell only where the count crosses a rung, not the whole grid.
SUBSAMPLE_CELLS = tuple(float(2.0 ** (k / 4.0)) for k in range(0, 41))


def _cell_rank(cells: np.ndarray, seed: int) -> np.ndarray:
    """A pseudo-random number in [0, 1) for each integer cell (N, 3), the same wherever and
    however often the cell turns up: a hash of its coordinates (and ``seed``)."""
    h = np.uint64(0x9E3779B97F4A7C15 + seed)
    with np.errstate(over="ignore"):
        for k in range(3):
            h = (h ^ cells[:, k].astype(np.uint64)) * np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) / float(2 ** 53)


def subsample(points: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """About ``count`` points evenly spread over ``points``: the centroids of a grid's cells
    (:func:`palnet.geometry.grid_means`), the grid sized to the cloud's area.

    The cell is the smallest of SUBSAMPLE_CELLS that leaves at most about ``count`` occupied
    cells; beyond ``count``, the cells with the lowest hash of their grid coordinates are kept
    (``seed`` salts it). The choice depends on where the points are, not on their order or
    number, and is stable: a point moved by a rounding error changes at most its own cell's
    pick, where a draw by position in the list would change the whole selection (and the
    registration built on it, by millimetres on a coarse real scan)."""
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) <= count:
        return pts
    for cell in SUBSAMPLE_CELLS:
        kept = grid_means(pts, cell)
        if len(kept) <= 1.1 * count:
            break
    if len(kept) > count:
        rank = _cell_rank(np.floor(kept / cell).astype(np.int64), seed)
        kept = kept[np.sort(np.argsort(rank, kind="stable")[:count])]
    return kept
