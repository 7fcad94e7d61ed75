"""Automatic coarse alignment of a scan to the canonical face frame, and unit detection.

The canonical frame is the one the default model was trained in (x to the
subject's left, y up, z out of the face, millimetres). A scan is aligned by
fitting a face template (a point cloud in that frame, shipped in the model
file) into the scan from many candidate orientations at once: trimmed
iterative closest point, template -> scan, so that extra scanned parts (neck,
back of the head, hair) do not pull the fit. No vertex order or topology is used.
"""
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from .errors import PalnetError
from .geometry import grid_subsample, least_axes, sample_surface
from .datatypes import UNITS_PER_MM

TYPICAL_FACE_RADIUS_MM = 80.0  # RMS distance of scan points from their centroid, roughly


@dataclass
class Alignment:
    """``canonical = rotation @ scan_mm / scale + translation``: the scan turned, moved and, for a
    face far from the template's size, brought nearer it (see palnet.pipeline.SIZE_RANGE)."""

    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))
    scale: float = 1.0  # the scanned face's size relative to the canonical frame's (1: as scanned)
    size: float = float("nan")  # the face's size relative to the template, as the canonical frame holds it
    rms_mm: float = float("nan")  # trimmed RMS distance template -> scan after the fit
    inlier_fraction: float = 0.0  # template points within 5 mm of the scan
    surface_agreement: float = float("nan")  # of the scan near the fitted template, the part within 5 mm of it
    shape: np.ndarray = field(default_factory=lambda: np.zeros(0))  # the fitted template's shape-mode coefficients
    # The same, fitted to the scan's mirror image (x -> -x in the canonical frame; see _halfway_to_mirror),
    # or None: the template is not symmetric, so the two differ, and a face and its mirror image swap them.
    mirror_shape: Optional[np.ndarray] = None
    # The pose (rotation, translation: template -> scan mm) the search ended in, before the polish:
    # a later search of the same scan that ends there needs no polish of its own (see align_scan).
    searched: Optional[tuple] = field(default=None, repr=False, compare=False)

    @property
    def matrix(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = self.rotation / self.scale
        m[:3, 3] = self.translation
        return m

    def to_canonical(self, points: np.ndarray) -> np.ndarray:  # dividing by a scale of 1 is exact
        return np.asarray(points) @ (self.rotation.T / self.scale) + self.translation

    def to_scan(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points) - self.translation) @ self.rotation * self.scale


def detect_units(vertices: np.ndarray) -> str:
    """mm, cm or m: the unit in which this scan is something palnet can place landmarks on.

    Read in a unit, the scan has a size (RMS distance of its points from their centroid) and
    a point spacing (median distance from a point to its nearest other point). A unit is
    plausible when the size is 5-300 mm (a close-up of a nose up to a head with shoulders)
    and the spacing at most 5 mm; of the plausible units the one that makes the size nearest
    a face's (TYPICAL_FACE_RADIUS_MM) wins; with none plausible, the nearest of all.
    """
    size_range_mm, max_spacing_mm = (5.0, 300.0), 5.0
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    radius = float(np.sqrt(((v - v.mean(axis=0)) ** 2).sum(axis=1).mean())) if len(v) else float("nan")
    if not np.isfinite(radius) or radius <= 0:
        raise PalnetError("cannot detect units of a scan with no extent")
    units = [u for u in UNITS_PER_MM if size_range_mm[0] <= radius / UNITS_PER_MM[u] <= size_range_mm[1]]
    if len(units) > 1:
        # Size alone cannot tell a close-up in mm from a head with shoulders in cm (both have an
        # RMS radius of about 15); their spacing can (about 1 against 0.1), since no scanner
        # leaves 5 mm between the points of a surface one could place landmarks on.
        tree = cKDTree(v, balanced_tree=False, compact_nodes=False)  # a quick build: one query
        d = tree.query(v[::max(1, len(v) // 2000)], k=min(4, len(v)))[0].reshape(-1, min(4, len(v)))
        d = np.where(d > 0, d, np.inf).min(axis=1)  # past duplicated points
        spacing = float(np.median(d[np.isfinite(d)])) if np.isfinite(d).any() else 0.0
        units = [u for u in units if spacing / UNITS_PER_MM[u] <= max_spacing_mm] or units
    return min(units or UNITS_PER_MM, key=lambda u: abs(np.log(radius / UNITS_PER_MM[u] / TYPICAL_FACE_RADIUS_MM)))


SCORE_CAP_MM = 8.0
SHAPE_RIDGE = 200.0  # penalty on shape coefficients (modes are 1-sigma displacements)
FINAL_STOP = (1e-5, 1e-3)  # the last fit has converged when a step turns less (radians) and moves less (mm)


def robust_score(dist: np.ndarray) -> np.ndarray:
    """RMS of template-to-scan distances capped at SCORE_CAP_MM, per row.

    Unlike a trimmed mean, the cap still charges a template point that finds no
    scan near it (a nose floating over the back of a head), yet one far-off
    point cannot dominate.
    """
    return np.sqrt((np.minimum(dist, SCORE_CAP_MM) ** 2).mean(axis=1))


def _kabsch_batch(src: np.ndarray, dst: np.ndarray, w: np.ndarray, with_scale: bool):
    """Best similarity dst ~ s R src + t for each batch row; src, dst (B, n, 3), w (B, n)."""
    ws = w.sum(axis=1, keepdims=True)[..., None]
    ms = (w[..., None] * src).sum(axis=1, keepdims=True) / ws
    md = (w[..., None] * dst).sum(axis=1, keepdims=True) / ws
    a, b = src - ms, dst - md
    cov = np.einsum("bn,bni,bnj->bij", w, b, a)
    u, sv, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u @ vt))
    fix = np.ones_like(sv)
    fix[:, 2] = d
    rot = u @ (fix[:, :, None] * vt)
    if with_scale:
        var = np.einsum("bn,bni,bni->b", w, a, a)
        s = np.clip((sv * fix).sum(axis=1) / var, 0.8, 1.25)
    else:
        s = np.ones(len(src))
    t = md[:, 0] - s[:, None] * np.einsum("bij,bj->bi", rot, ms[:, 0])
    return rot, s, t


def _icp(tree: cKDTree, template: np.ndarray, rot, s, t, iters: int, keep: float, with_scale: bool,
         eps: float = 0.0):
    """Trimmed ICP from the template into the scan for a batch of starting poses."""
    b = len(rot)
    for _ in range(iters):
        moved = s[:, None, None] * np.einsum("bij,nj->bni", rot, template) + t[:, None]
        dist, idx = tree.query(moved.reshape(-1, 3), eps=eps)
        dist = dist.reshape(b, -1)
        cut = np.quantile(dist, keep, axis=1)
        w = (dist <= cut[:, None]).astype(np.float64)
        rot, s, t = _kabsch_batch(np.broadcast_to(template, moved.shape), tree.data[idx].reshape(moved.shape),
                                  w, with_scale)
    moved = s[:, None, None] * np.einsum("bij,nj->bni", rot, template) + t[:, None]
    dist = tree.query(moved.reshape(-1, 3))[0].reshape(b, -1)
    return rot, s, t, robust_score(dist), (dist < 5.0).mean(axis=1)


def _icp_shape(tree: cKDTree, template: np.ndarray, modes: np.ndarray, rot, t, iters: int, keep: float,
               ridge: float = SHAPE_RIDGE, eps: float = 0.0):
    """Trimmed ICP in which the template also takes on the scanned face's shape:
    x = R (template + sum_k b_k modes_k) + t, with b kept small by a ridge penalty.
    ``eps`` > 0 takes approximate closest points (see COARSE_EPS) while fitting; the
    score is always measured exactly. Returns (rot, t, shape coefficients, score, inlier fraction)."""
    b_n, k = len(rot), len(modes)
    n = len(template)
    m = np.transpose(modes, (1, 2, 0))  # (N, 3, K)
    m_flat = m.reshape(n * 3, k)
    mm = np.einsum("nik,nil->nkl", m, m).reshape(n, k * k)  # per point: its modes' Gram matrix
    coef = np.zeros((b_n, k))
    # Written as matrix products (the same sums as einsum over b, n, i, k): 3-4x faster.
    for _ in range(iters):
        shaped = template + (coef @ m_flat.T).reshape(b_n, n, 3)
        moved = np.matmul(shaped, np.transpose(rot, (0, 2, 1))) + t[:, None]
        dist, idx = tree.query(moved.reshape(-1, 3), eps=eps)
        dist = dist.reshape(b_n, -1)
        w = (dist <= np.quantile(dist, keep, axis=1)[:, None]).astype(np.float64)
        target = tree.data[idx].reshape(moved.shape)
        rot, _, t = _kabsch_batch(shaped, target, w, False)
        local = np.matmul(target - t[:, None], rot) - template  # residual in template frame
        lhs = (w @ mm).reshape(b_n, k, k) + ridge * np.eye(k)
        rhs = (w[..., None] * local).reshape(b_n, n * 3) @ m_flat
        coef = np.linalg.solve(lhs, rhs[..., None])[..., 0]
    shaped = template + (coef @ m_flat.T).reshape(b_n, n, 3)
    moved = np.matmul(shaped, np.transpose(rot, (0, 2, 1))) + t[:, None]
    dist = tree.query(moved.reshape(-1, 3))[0].reshape(b_n, -1)
    return rot, t, coef, robust_score(dist), (dist < 5.0).mean(axis=1)


def template_normals(template: np.ndarray, k: int = 12) -> np.ndarray:
    """Unit normals of the template's surface from its ``k`` nearest points, turned
    away from a point well behind the face (canonical +z points out of the face).
    Computed once per template: a model's template is the same for every scan."""
    key = (template.shape, k, hash(np.ascontiguousarray(template, dtype=np.float64).tobytes()))
    if key not in _NORMALS_CACHE:
        idx = cKDTree(template).query(template, k=min(k, len(template)))[1]
        nb = template[idx] - template[idx].mean(axis=1, keepdims=True)
        n = np.linalg.svd(nb, full_matrices=False)[2][:, 2]
        behind = template.mean(axis=0) - [0.0, 0.0, 120.0]
        _NORMALS_CACHE[key] = n * np.sign(((template - behind) * n).sum(axis=1))[:, None]
    return _NORMALS_CACHE[key]


_NORMALS_CACHE: dict = {}


def rotvec_matrix(omega: np.ndarray) -> np.ndarray:
    """The rotation by |omega| radians about omega (Rodrigues' formula): what
    ``Rotation.from_rotvec(omega).as_matrix()`` gives, for one vector, without its overhead."""
    theta = float(np.sqrt(omega @ omega))
    k = np.array([[0.0, -omega[2], omega[1]], [omega[2], 0.0, -omega[0]], [-omega[1], omega[0], 0.0]])
    if theta < 1e-8:  # sin(theta)/theta -> 1, (1 - cos(theta))/theta^2 -> 1/2
        return np.eye(3) + k + 0.5 * (k @ k)
    return np.eye(3) + (np.sin(theta) / theta) * k + ((1.0 - np.cos(theta)) / theta ** 2) * (k @ k)


def _plane_step(turned: np.ndarray, normals: np.ndarray, res: np.ndarray, w: np.ndarray, m: Optional[np.ndarray],
                rot: np.ndarray, t: np.ndarray, coef: np.ndarray, ridge: float):
    """One weighted point-to-plane least-squares step, linearised: turn by omega about the
    weighted centre, shift by dt, change the shape by dcoef (ridge-penalised). ``turned``:
    the shaped template turned into the scan (without the shift), ``res``: each point's
    signed distance to its plane along ``normals``. Returns (rot, t, coef, step, centre)."""
    k = len(coef)
    centre = (w[:, None] * turned).sum(axis=0) / w.sum()
    cols = [np.cross(turned - centre, normals), normals]
    if k:
        cols.append(np.einsum("nj,njk->nk", normals @ rot, m))  # the normal along each mode, per point
    a = np.concatenate(cols, axis=1)
    lhs = (a * w[:, None]).T @ a + 1e-9 * np.eye(a.shape[1])
    rhs = -(a * w[:, None]).T @ res
    if k:
        lhs[6:, 6:] += ridge * np.eye(k)
        rhs[6:] -= ridge * coef
    x = np.linalg.solve(lhs, rhs)
    return _take_step(rot, t, coef, x, centre) + (x, centre)


def _take_step(rot: np.ndarray, t: np.ndarray, coef: np.ndarray, x: np.ndarray, centre: np.ndarray):
    """(rot, t, coef) after the step ``x`` of :func:`_plane_step`: turned by x[:3] about
    ``centre`` (the turned template's, without the shift), shifted by x[3:6], shaped by x[6:]."""
    turn = rotvec_matrix(x[:3])
    return turn @ rot, t + centre - turn @ centre + x[3:6], coef + x[6:]


def _fit_plane(tree: cKDTree, template: np.ndarray, normals: np.ndarray, modes: Optional[np.ndarray],
               rot: np.ndarray, t: np.ndarray, iters: int, sigma: float, ridge: float = SHAPE_RIDGE,
               stop: tuple = FINAL_STOP):
    """The last fit of one pose: point-to-plane ICP (template normals) with Cauchy weights
    of scale ``sigma`` mm, bending the template by ``modes`` when given.

    A trimmed point-to-point fit stops wherever its trimmed set stops changing, a few
    mm and degrees apart for different starts; this one converges in a few steps, and
    the smooth weights leave one minimum near the answer, so the same scan in any
    pose ends in the same place. Returns (rot, t, score, inlier fraction, shape coefficients)."""
    k = 0 if modes is None else len(modes)
    m = None if modes is None else np.transpose(modes, (1, 2, 0))  # (N, 3, K)
    coef = np.zeros(k)
    for _ in range(iters):
        turned = (template if m is None else template + m @ coef) @ rot.T
        moved = turned + t
        dist, idx = tree.query(moved)
        w = 1.0 / (1.0 + (dist / sigma) ** 2)
        nrm = normals @ rot.T
        res = ((moved - tree.data[idx]) * nrm).sum(axis=1)  # signed distance to the scan point's plane
        rot, t, coef, x, _ = _plane_step(turned, nrm, res, w, m, rot, t, coef, ridge)
        if np.linalg.norm(x[:3]) < stop[0] and np.linalg.norm(x[3:6]) < stop[1]:
            break
    dist = tree.query((template if m is None else template + m @ coef) @ rot.T + t)[0]
    return rot, t, float(robust_score(dist[None])[0]), float((dist < 5.0).mean()), coef


POLISH_NEIGHBOURS = 16  # surface samples that make up the smooth surface near a point
POLISH_STOP = (1e-9, 1e-7)  # radians, mm: far below what moves a landmark
POLISH_ITERS = 40
# The polish searches the nearest samples anew only once its points have moved this far since
# the last search (between searches it reads the distances to the same samples), and always
# before it stops: its end is a fixed point of the fit to the true nearest samples. A sample
# joins or leaves a point's neighbours with weight zero, so the surface it fits does not jump.
POLISH_RESEARCH_MM = 0.05
# Its steps shrink by a steady ratio (0.5-0.8 per step, so 20-40 steps to POLISH_STOP): once two
# steps on the same samples point the same way, the polish leaps over the rest of them (_leap).
# On 40 test scans: 22 steps instead of 31 on average, and 39 ends within 1e-5 mm of the end of
# a polish run for 400 steps without leaps, against 31 without leaps in the same 40 steps (a
# bolder leap, ratios up to 0.95, overshot once by 0.05 mm). A turn counts as the move it makes
# POLISH_TURN_MM away.
POLISH_TURN_MM = 100.0
POLISH_LEAP_COS = 0.95
POLISH_LEAP_RATIO = 0.8


def _smooth_surface_points(tree: cKDTree, points: np.ndarray, idx: Optional[np.ndarray] = None):
    """For each point, the plane of its POLISH_NEIGHBOURS nearest surface samples: their
    centroid and normal (the least direction of their spread), each sample weighted by
    (1 - (d/h)^2)^3 with h the distance of the next nearest one. Returns (centroids, normals,
    the samples' indices); ``idx``: those of an earlier call, whose distances are read anew
    instead of searching (see POLISH_RESEARCH_MM).

    Unlike the nearest sample, which jumps from sample to sample, this plane moves
    continuously with the point (a sample joins or leaves the neighbours with weight zero),
    and the distance to it does not change as the point slides along a flat surface: a fit
    to these planes has one answer, not one per set of nearest samples."""
    k = min(POLISH_NEIGHBOURS + 1, tree.n)
    if idx is None:
        d, idx = tree.query(points, k=k)
        sq, idx = (d * d).reshape(len(points), k), idx.reshape(len(points), k)
        nb = tree.data[idx]
    else:  # the samples stay in the order of that search
        nb = tree.data[idx]
        diff = nb - points[:, None]
        sq = np.einsum("nki,nki->nk", diff, diff)
    phi = 1.0 - np.minimum(sq / np.maximum(sq.max(axis=1, keepdims=True), 1e-24), 1.0)
    phi *= phi * phi
    phi[np.arange(len(sq)), np.argmin(sq, axis=1)] += 1e-12  # a lone sample (or coinciding ones) still gives a point
    phi /= phi.sum(axis=1, keepdims=True)
    centroid = np.einsum("nk,nki->ni", phi, nb)
    off = nb - centroid[:, None]
    cov = np.matmul(off.transpose(0, 2, 1) * phi[:, None, :], off)  # weighted covariance
    return centroid, least_axes(cov), idx


def _polish(tree: cKDTree, template: np.ndarray, normals: np.ndarray, modes: Optional[np.ndarray],
            rot: np.ndarray, t: np.ndarray, coef: np.ndarray, sigma: float, ridge: float = SHAPE_RIDGE):
    """The last fit carried on against a smooth surface (:func:`_smooth_surface_points`)
    until it stops moving (POLISH_STOP): the end no longer depends on where the fit started
    within its basin, so the same scan in any pose, listed in any order, ends in the same
    place to within rounding, and so do the landmarks the network reads off it."""
    k = 0 if modes is None else len(modes)
    m = None if modes is None else np.transpose(modes, (1, 2, 0))  # (N, 3, K)
    coef = np.asarray(coef, dtype=np.float64).reshape(k) if k else np.zeros(0)
    searched_at, idx, before = None, None, None
    for _ in range(POLISH_ITERS):
        turned = (template if m is None else template + m @ coef) @ rot.T
        moved = turned + t
        search = searched_at is None or np.abs(moved - searched_at).max() > POLISH_RESEARCH_MM
        centroid, nrm, idx = _smooth_surface_points(tree, moved, None if search else idx)
        if search:
            searched_at = moved
        off = moved - centroid
        w = 1.0 / (1.0 + (off ** 2).sum(axis=1) / sigma ** 2)
        res = (off * nrm).sum(axis=1)  # distance to the scan's local plane (the normal's sign cancels out)
        rot, t, coef, x, centre = _plane_step(turned, nrm, res, w, m, rot, t, coef, ridge)
        if np.linalg.norm(x[:3]) < POLISH_STOP[0] and np.linalg.norm(x[3:6]) < POLISH_STOP[1]:
            if search:
                break
            searched_at = None  # settled on the samples of the last search: confirm with a new one
            before = None
            continue
        step = np.concatenate([POLISH_TURN_MM * x[:3], x[3:]])
        leap = None if before is None or search else _leap(before, step)
        if leap:
            rot, t, coef = _take_step(rot, t, coef, leap * x, centre)
        before = None if leap else step
    return rot, t, coef


def _leap(before: np.ndarray, step: np.ndarray) -> float:
    """How far past ``step`` the polish goes at once: where steps on the same samples shrink by
    a steady ratio r along one direction (r = 0.5-0.8 measured), the rest of them add up to
    r / (1 - r) times the last one; 0 (none) unless the two steps point the same way
    (POLISH_LEAP_COS) and shrink (r at most POLISH_LEAP_RATIO)."""
    across = float(step @ before)
    if across <= 0.0 or across ** 2 < POLISH_LEAP_COS ** 2 * float(step @ step) * float(before @ before):
        return 0.0
    r = across / float(before @ before)
    return r / (1.0 - r) if r <= POLISH_LEAP_RATIO else 0.0


MIRROR = np.diag([-1.0, 1.0, 1.0])  # x -> -x in the canonical frame: the face's mirror image


def _halfway_to_mirror(tree: cKDTree, template: np.ndarray, normals: np.ndarray, modes: Optional[np.ndarray],
                       rot: np.ndarray, t: np.ndarray, coef: np.ndarray):
    """The polished pose (``rot``, ``t``: template -> scan) moved halfway to the pose the mirror
    image gives: the template is polished once more against the scan mirrored in the canonical
    frame (x -> -x), that pose is mirrored back, and the pose halfway between the two is kept.

    The face template is not quite symmetric, so a scan and its mirror image were aligned a
    little differently (0.2 degrees and 0.5 mm on a real face-only scan), and the network turned
    that into different landmarks. Halfway between the two, the scan and its mirror image get
    mirrored poses (to the precision of the polish), so a mirrored scan gets mirrored landmarks.

    Returns (rot, t, the shape coefficients fitted to the mirror image)."""
    canonical = (tree.data - t) @ rot  # the scan's surface samples in the canonical frame
    q_rot, q_t, q_coef = _polish(cKDTree(canonical @ MIRROR), template, normals, modes, np.eye(3), np.zeros(3), coef,
                            FINAL_SIGMA_MM)
    # template -> mirrored scan: q_rot x + q_t; mirrored back: MIRROR q_rot MIRROR x + MIRROR q_t
    half = Rotation.from_matrix(MIRROR @ q_rot @ MIRROR).as_rotvec() / 2.0
    half_rot = rotvec_matrix(half)
    half_t = np.linalg.solve(half_rot + np.eye(3), MIRROR @ q_t)  # half_rot (half_rot x + half_t) + half_t = mirrored
    return rot @ half_rot, rot @ half_t + t, q_coef


def rotation_grid(n_directions: int = 120, n_rolls: int = 18) -> np.ndarray:
    """Rotations spread evenly over SO(3): the template's +z (out of the face) sent to
    ``n_directions`` Fibonacci-sphere directions, each with ``n_rolls`` turns about it.

    Every rotation lies within about 15 degrees of one of them (for the defaults),
    inside the reach of the closest-point refinement; random sampling of the same
    size leaves gaps of 30 degrees and more.
    """
    i = np.arange(n_directions) + 0.5
    polar = np.arccos(1.0 - 2.0 * i / n_directions)
    azimuth = np.pi * (1.0 + 5.0 ** 0.5) * i
    f = np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=1)
    axis = np.cross([0.0, 0.0, 1.0], f)
    norm = np.linalg.norm(axis, axis=1, keepdims=True)
    axis = np.where(norm > 1e-9, axis / np.maximum(norm, 1e-12), [1.0, 0.0, 0.0])
    to_f = Rotation.from_rotvec(axis * polar[:, None])  # polar angle = angle between z and f
    rolls = np.arange(n_rolls) * (2 * np.pi / n_rolls)
    roll = Rotation.from_rotvec((f[:, None, :] * rolls[None, :, None]).reshape(-1, 3))
    return (roll * to_f[np.repeat(np.arange(n_directions), n_rolls)]).as_matrix()


def _shift_only(tree: cKDTree, template: np.ndarray, rot: np.ndarray, t: np.ndarray, iters: int, keep: float,
                eps: float = 0.0):
    """Translation-only trimmed ICP for many fixed orientations at once; returns (t, trimmed rms),
    both with approximate closest points when ``eps`` > 0."""
    turned = np.einsum("bij,nj->bni", rot, template)
    for it in range(iters + 1):
        moved = turned + t[:, None]
        dist, idx = tree.query(moved.reshape(-1, 3), eps=eps)
        dist = dist.reshape(len(rot), -1)
        cut = np.quantile(dist, keep, axis=1)[:, None]
        if it == iters:
            return t, robust_score(dist)
        w = (dist <= cut)[..., None]
        delta = (tree.data[idx].reshape(moved.shape) - moved) * w
        t = t + delta.sum(axis=1) / w.sum(axis=1)
    return t, None


def _most_extreme(points: np.ndarray, directions: np.ndarray, n: int = 1, apart: float = 20.0) -> np.ndarray:
    """For each direction, the point farthest along it, and then (``n`` > 1) the farthest
    of those at least ``apart`` mm from the ones chosen before: (n, D, 3).

    Such points are always corners of the convex hull, so only the hull's corners are
    compared (a few hundred, not all points)."""
    cand = points
    if len(points) > 100:
        try:
            from scipy.spatial import ConvexHull
            cand = points[ConvexHull(points).vertices]
        except Exception:  # flat or degenerate point sets: compare all of them
            cand = points
    proj = directions @ cand.T  # (D, H): one row per direction, so that each search runs along a row
    if n > 1:  # which corners lie within ``apart`` of each other, (H, H): far fewer corners than directions
        sq = (cand ** 2).sum(axis=1)
        close = sq[:, None] + sq[None] - 2.0 * (cand @ cand.T) < apart ** 2
    chosen = []
    for k in range(n):
        pick = np.argmax(proj, axis=1)
        chosen.append(cand[pick])
        if k + 1 < n:
            proj[close[pick]] = -np.inf
    return np.stack(chosen)


ISOLATED_MM = 10.0  # a grid point with fewer than ISOLATED_NEIGHBOURS others this close is off the surface
ISOLATED_NEIGHBOURS = 3


def surface_points(tree: cKDTree) -> np.ndarray:
    """The points of a 4 mm grid subsample that have surface around them: stray points
    (spike tips, specks) have no neighbours within ISOLATED_MM. A sparse cloud in which
    most points are that far apart is returned whole."""
    pts = tree.data
    if len(pts) <= ISOLATED_NEIGHBOURS:
        return pts
    gap = tree.query(pts, k=ISOLATED_NEIGHBOURS + 1)[0][:, -1]
    keep = gap <= ISOLATED_MM
    return pts[keep] if keep.mean() >= 0.5 else pts


def _distinct_best(score: np.ndarray, rot: np.ndarray, t: np.ndarray, n: int,
                   min_degrees: float = 15.0, min_mm: float = 15.0) -> np.ndarray:
    """Indices of the ``n`` best-scoring poses, skipping near-duplicates of better ones.

    Without this the survivors of a sweep crowd into one (possibly wrong) basin.
    """
    chosen = []
    cos_min = 1.0 + 2.0 * np.cos(np.radians(min_degrees))  # trace of a rotation by min_degrees
    for i in np.argsort(score, kind="stable"):  # equal scores: the lower index first, on every machine
        if chosen:
            c = np.array(chosen)
            same = (np.einsum("bij,ij->b", rot[c], rot[i]) > cos_min) & (np.linalg.norm(t[c] - t[i], axis=1) < min_mm)
            if same.any():
                continue
        chosen.append(i)
        if len(chosen) == n:
            break
    return np.array(chosen)


_GRID = None  # filled on first use


@dataclass(frozen=True)
class SearchEffort:
    """How widely the coarse search looks before the last fit."""

    probes: int  # template points that score every orientation of the sweep
    keep: int  # orientations of the sweep whose position is then fitted
    stages: tuple  # coarse-to-fine shape fits: (candidates kept, template points, ICP iterations)
    clear_mm: float = 0.0  # a first last fit this close (RMS) ends the search (see align_scan)


# Every scan is first aligned with FAST. A fit that ends doubtful (pipeline.scan_status not
# "ok") is searched again with THOROUGH (the earlier search, 30 probes and 300 orientations,
# with twice the candidates for the 800-point fits), and the better fit is kept. On 1700
# held-out alignments (tools/bench_robust.py's 1000 scans, 700 more aligned alone) FAST ended
# in the wrong place twice, both times flagged (template fit RMS 4.3 and 4.8 mm: the face
# fitted to the back of the head, its near-true orientation ranked too low on the noisier
# score to be kept), and THOROUGH found both.
# FAST ends its search at the first last fit when that fits within CLEAR_FIT_MM (RMS, distances
# capped at 8 mm): measured on 132 scans (60 held-out test heads, 30 of the held-out warp
# family, 40 in any pose with crops, spikes and warps, 2 real scans), the full search ended
# elsewhere only after first fits of 3.20 mm (0.74 mm away, and the early end fitted better)
# and 4.54 mm (0.02 mm); below 3.08 mm it always ended where the first fit was, to 0.003 mm.
# 47 of the 60 test heads fit within 2.5 mm at once, and their alignment takes about 40 % less time.
CLEAR_FIT_MM = 2.5
FAST = SearchEffort(probes=15, keep=200, stages=((48, 150, 6), (3, 800, 15)), clear_mm=CLEAR_FIT_MM)
THOROUGH = SearchEffort(probes=30, keep=300, stages=((48, 150, 6), (6, 800, 15)))
# The sweep, the shift fits and the shape fits on the 4 mm subsample take approximate
# closest points: each within (1 + COARSE_EPS) times the distance of the closest one.
# For points 20 mm off the scan, as most of a poor candidate's are, the search takes a
# third of the time (near the surface about the same). These stages only rank candidates
# and bring them near the answer; the last fit reads exact closest points on the surface samples.
COARSE_EPS = 1.0
FRONT_ANCHORS = 3  # starting points of the nasal tip per orientation

FINAL_FIT = (1500, 30)  # template points, most iterations of the last fit
COARSE_FIT_POINTS = 400  # template points of the last fit's first round, over all its starts
# The first round stops once a step turns less than 0.01 degree and moves less than 0.01 mm:
# on 400 points the closest pairs then swap back and forth by about that much for good.
COARSE_STOP = (2e-4, 0.01)  # radians, mm
LEAFSIZE = 32  # points per leaf of the subsample's search tree: far-off queries of the sweep run faster
FINAL_SIGMA_MM = 3.0  # scale of the last fit's robust weights
FINAL_STARTS = 3  # distinct poses that get the last fit
FINAL_SHIFTS = ((0.0, 20.0, 0.0), (0.0, -20.0, 0.0))  # template mm: restarts of the best pose
KICK_DEGREES = 12.0
KICK_SHIFTS = ((0, 20, 0), (0, -20, 0), (0, 40, 0), (0, -40, 0), (15, 0, 0), (-15, 0, 0))  # template mm
HOP_POSES = 3
FINAL_POINTS = 40_000
FINAL_SPACING_MM = 1.0  # surface sampling of the last fit
TRIM = 0.7  # fraction of template points that must find the scan: parts of a face may be cut off


def align_scan(vertices_mm: np.ndarray, template: np.ndarray, seed: int = 0,
               modes: Optional[np.ndarray] = None, triangles: Optional[np.ndarray] = None,
               effort: SearchEffort = FAST, known: Optional[Alignment] = None) -> Alignment:
    """Find the rigid pose of a face scan (millimetres) in the template's canonical frame.

    ``modes`` (K, N, 3), shape modes at the template points, let the final fits bend
    the template to the scanned face (the pose stays rigid). With ``triangles`` the
    last fit reads points sampled evenly on the surface, not the vertices, so a coarse
    mesh is fitted as well as a dense one.

    ``known``: an earlier alignment of the same scan (the same arguments, another ``effort``).
    When this search ends where that one's did (SAME_BASIN_MM), the polish would end where that
    one's ended, so ``known`` itself is returned: the wider search of a doubtful fit then costs
    no second polish.
    """
    v = np.asarray(vertices_mm, dtype=np.float64)
    if len(v) < 10:
        raise PalnetError("only {} points: too few to find a face".format(len(v)))
    pts = grid_subsample(v, 4.0)
    tree = cKDTree(pts, leafsize=LEAFSIZE)
    # The sweep starts on the scan's most extreme points in each direction: a spike the
    # cleanup missed would be one for many directions. Points with (almost) no surface
    # around them are left out of that choice.
    front_pts = surface_points(tree)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(template))  # nested random subsets of the template

    # Candidates move the template into the scan: x_scan = s R x_template + t. For every
    # orientation of an even grid, the template's most anterior point (the nasal tip)
    # starts on the scan's most anterior points in that direction: whatever else was
    # scanned (neck, back of the head) is never in front of the nose. All are scored
    # as they stand; the best distinct ones get their position fitted, and the best
    # of those are refined fully.
    global _GRID
    if _GRID is None:
        _GRID = rotation_grid()
    rot = _GRID
    forward = rot[:, :, 2]  # template +z (out of the face) in scan coordinates
    tip = template[np.argmax(template[:, 2])]
    # Turned a little off the true pose, the forehead or the chin can stand out beyond the
    # nose: each orientation is also tried on the next most extreme points, away from the first.
    front = _most_extreme(front_pts, forward, FRONT_ANCHORS).reshape(-1, 3)
    rot = np.tile(rot, (FRONT_ANCHORS, 1, 1))
    t = front - np.einsum("bij,j->bi", rot, tip)
    probe = template[order[:effort.probes]]
    moved = np.einsum("bij,nj->bni", rot, probe) + t[:, None]
    # Distances are capped in the score anyway: the search may stop at the cap (much faster).
    score = robust_score(tree.query(moved.reshape(-1, 3), distance_upper_bound=SCORE_CAP_MM,
                                  eps=COARSE_EPS)[0].reshape(len(rot), -1))
    best = _distinct_best(score, rot, t, effort.keep)
    rot, t = rot[best], t[best]
    t, rms = _shift_only(tree, template[order[:60]], rot, t, iters=3, keep=TRIM, eps=COARSE_EPS)
    s = np.ones(len(rot))
    for keep_n, n_tpl, iters in effort.stages:
        best = _distinct_best(rms, rot, t, keep_n)
        rot, s, t = rot[best], s[best], t[best]
        sub = order[: min(n_tpl, len(template))]
        if modes is None:
            rot, s, t, rms, inl = _icp(tree, template[sub], rot, s, t, iters=iters, keep=TRIM, with_scale=False,
                                       eps=COARSE_EPS)
        else:
            rot, t, _, rms, inl = _icp_shape(tree, template[sub], modes[:, sub], rot, t, iters=iters, keep=TRIM,
                                             eps=COARSE_EPS)
    top = np.argsort(rms, kind="stable")[:HOP_POSES]
    # The last fit reads the scan itself, not the grid subsample, whose cells depend on
    # the pose: the same scan in another pose must end in the same place. Points sampled
    # on the triangles (each triangle's samples depend only on its index) stand for the
    # surface between the vertices of a coarse mesh; a point cloud gives its vertices.
    if triangles is not None and len(triangles):
        surface = cKDTree(sample_surface(v, np.asarray(triangles), FINAL_SPACING_MM, seed, max_points=FINAL_POINTS))
    else:
        surface = cKDTree(v[:: max(1, int(np.ceil(len(v) / FINAL_POINTS)))])
    all_normals = template_normals(template)

    def last_fit(r0, t0, n_points, stop=FINAL_STOP):
        sub = order[: min(n_points, len(template))]
        shape = None if modes is None else modes[:, sub]
        return _fit_plane(surface, template[sub], all_normals[sub], shape, r0, t0, FINAL_FIT[1], FINAL_SIGMA_MM,
                          stop=stop)

    # Every start is fitted on a subset of the template points first; only the winner is
    # then refined on all of them (the starts mostly end near one pose, or far worse; where
    # two poses fit almost alike, the subset may choose the other one). When the best pose
    # so far fits the scan closely (effort.clear_mm), it is the face and the search ends.
    first = last_fit(rot[top[0]], t[top[0]], COARSE_FIT_POINTS, COARSE_STOP)
    if first[2] <= effort.clear_mm:
        r, t, rms, inl, coef = first
    else:
        r, t, rms, inl, coef = _search_on(first, tree, template, modes, order, rot[top], t[top], last_fit)
    if known is not None and known.searched is not None and \
            _pose_gap_mm(template, (r, t), known.searched) <= SAME_BASIN_MM:
        return known
    searched = (r.copy(), np.array(t, dtype=np.float64))
    # The winner is refined on all FINAL_FIT[0] points against the smooth surface (see _polish).
    sub = order[: min(FINAL_FIT[0], len(template))]
    r, t, coef = _polish(surface, template[sub], all_normals[sub], None if modes is None else modes[:, sub], r, t, coef,
                         FINAL_SIGMA_MM)
    r, t, mirror_coef = _halfway_to_mirror(surface, template[sub], all_normals[sub],
                                           None if modes is None else modes[:, sub], r, t, coef)
    fitted = (template[sub] if modes is None or not len(coef) else
              template[sub] + np.transpose(modes[:, sub], (1, 2, 0)) @ coef) @ r.T + t
    dist = surface.query(fitted)[0]
    rms, inl = float(robust_score(dist[None])[0]), float((dist < 5.0).mean())
    shaped = template if modes is None or not len(coef) else template + np.transpose(modes, (1, 2, 0)) @ coef
    return Alignment(rotation=r.T, translation=-r.T @ t, scale=1.0, size=_face_size(surface, template, order, r, t),
                     rms_mm=rms, inlier_fraction=inl,
                     surface_agreement=surface_agreement(surface.data, template, shaped @ r.T + t, r),
                     shape=np.asarray(coef, dtype=np.float64), mirror_shape=np.asarray(mirror_coef, dtype=np.float64),
                     searched=searched)


# Two searches whose poses move no template point further apart than this (mm) ended in the
# same basin: polished, their poses agree (see _polish). Both searches run on 50 warped test
# scans and 2 real ones: 49 of 52 ended within 0.32 mm of each other, and their polished poses
# then lay at most 0.0022 mm apart (all but one within 1e-5 mm); the other three ended 0.85,
# 2.8 and 6.8 mm apart (polished: 0, 0 and 0.71 mm apart) and get their own polish.
SAME_BASIN_MM = 0.5


def _pose_gap_mm(template: np.ndarray, a: tuple, b: tuple) -> float:
    """How far apart (mm) two poses (rotation, translation: template -> scan) put the template's points, at most."""
    return float(np.linalg.norm(template @ (a[0] - b[0]).T + (a[1] - b[1]), axis=1).max())


def _search_on(first, tree: cKDTree, template: np.ndarray, modes: Optional[np.ndarray], order: np.ndarray,
               rot: np.ndarray, t: np.ndarray, last_fit):
    """The search past a first fit that is not clear: basin hopping from the best poses ``rot``,
    ``t`` (restarted turned by small rotations and moved up, down and sideways, since
    closest-point fits stop in shallow minima a few degrees or a feature (nose on lips) off),
    then the last fit (``last_fit``, on the surface samples) of the best poses before and after
    hopping (the right pose may not have slid into place yet), of the winner turned half a turn
    about the face's forward axis (a face fitted upside down matches its own outline well
    enough to win every stage before this one) and of the winner moved by a feature's height
    (nose on the lips). ``first``: the last fit of the best pose, already done. Returns the
    best of them all, as ``last_fit`` does."""
    kicks = Rotation.from_rotvec(np.radians(KICK_DEGREES) * np.vstack([np.eye(3), -np.eye(3)])).as_matrix()
    kicks = np.concatenate([np.eye(3)[None], kicks, np.repeat(np.eye(3)[None], len(KICK_SHIFTS), 0)])
    shifts = np.concatenate([np.zeros((7, 3)), np.asarray(KICK_SHIFTS, dtype=np.float64)])
    centre = template.mean(axis=0)
    rot2 = np.einsum("aij,bjk->abik", rot, kicks).reshape(-1, 3, 3)
    t2 = (t[:, None] + np.einsum("aij,j->ai", rot, centre)[:, None]
          - np.einsum("abij,j->abi", rot2.reshape(len(rot), -1, 3, 3), centre)
          + np.einsum("aij,bj->abi", rot, shifts)).reshape(-1, 3)
    sub = order[:300]
    if modes is None:
        hop_rot, _, hop_t, hop_rms, _ = _icp(tree, template[sub], rot2, np.ones(len(rot2)), t2, iters=10, keep=TRIM,
                                             with_scale=False, eps=COARSE_EPS)
    else:  # judged with the template bent to each candidate's face: a real face fits far better
        hop_rot, hop_t, _, hop_rms, _ = _icp_shape(tree, template[sub], modes[:, sub], rot2, t2, iters=10,
                                                   keep=TRIM, eps=COARSE_EPS)
    best = _distinct_best(hop_rms, hop_rot, hop_t, FINAL_STARTS)
    starts = zip(np.concatenate([rot[1:], hop_rot[best]]), np.concatenate([t[1:], hop_t[best]]))
    fit = min([first] + [last_fit(r0, t0, COARSE_FIT_POINTS, COARSE_STOP) for r0, t0 in starts], key=lambda f: f[2])
    r, t0 = fit[0], fit[1]
    flip = r @ np.diag([-1.0, -1.0, 1.0])
    for r1, t1 in [(flip, t0 + r @ centre - flip @ centre)] + [(r, t0 + r @ np.array(d)) for d in FINAL_SHIFTS]:
        other = last_fit(r1, t1, COARSE_FIT_POINTS, COARSE_STOP)
        if other[2] < fit[2]:
            fit = other
    return fit


SIZE_FIT_POINTS = 500  # template points of the size estimate
SIZE_FIT_ITERS = 30
SIZE_FIT_KEEP = 0.9  # the fraction of them that count: trimmed harder, the estimate leans towards 1


def _face_size(tree: cKDTree, template: np.ndarray, order: np.ndarray, r: np.ndarray, t: np.ndarray) -> float:
    """The scanned face's size relative to the template, from its pose (``r``, ``t``: template ->
    scan): trimmed closest-point fits of the template (without its shape modes, which take on
    part of a face's size) that may also scale it, within 0.8-1.25, on the surface samples of the
    last fit (``tree``), which do not depend on the pose: neither does the estimate, nor whether a
    face is read at another size. Seven synthetic faces scaled by 0.85 and 1.15 read 0.851-0.872
    and 1.134-1.148 times their own size; 80 of the head model's own faces (test seeds) read
    0.82-1.12, 80 % of them 0.92-1.07."""
    sub = order[:min(SIZE_FIT_POINTS, len(template))]
    s = _icp(tree, template[sub], r[None], np.ones(1), np.asarray(t, dtype=np.float64)[None], iters=SIZE_FIT_ITERS,
             keep=SIZE_FIT_KEEP, with_scale=True)[1]
    return float(s[0])


AGREEMENT_NEAR_MM = 15.0
AGREEMENT_ON_MM = 5.0
INTERIOR_MARGIN_MM = 12.0  # template points this far inside its outline judge the scan near them


def template_interior(template: np.ndarray) -> np.ndarray:
    """Mask of the template points at least INTERIOR_MARGIN_MM inside its outline (cached per template)."""
    key = ("interior", template.shape, hash(np.ascontiguousarray(template, dtype=np.float64).tobytes()))
    if key not in _NORMALS_CACHE:
        tree = cKDTree(template)
        idx = tree.query(template, k=min(12, len(template)))[1]
        # outline points: their neighbours' centre lies off to one side
        border = np.linalg.norm(template[idx].mean(axis=1) - template, axis=1) > 2.0
        dist = cKDTree(template[border]).query(template)[0] if border.any() else np.full(len(template), np.inf)
        _NORMALS_CACHE[key] = dist >= INTERIOR_MARGIN_MM
    return _NORMALS_CACHE[key]


def surface_agreement(scan_points: np.ndarray, template: np.ndarray, fitted: np.ndarray, rot: np.ndarray) -> float:
    """Of the scan points that lie above or below the inner part of the fitted template
    (away from its outline, where a scan goes on beyond it; within AGREEMENT_NEAR_MM along
    its normal), the fraction within AGREEMENT_ON_MM of it. A face scan is a surface that
    lies on the template there; a cloud filling a volume (noise) has as many points beside
    the template as on it, however well each template point finds a neighbour."""
    inner = template_interior(template)
    if not inner.any():
        return float("nan")
    pts = fitted[inner]  # the template where the fit put it, in the face's shape
    nrm = template_normals(template)[inner] @ rot.T
    d, i = cKDTree(pts).query(scan_points, distance_upper_bound=AGREEMENT_NEAR_MM)
    near = np.isfinite(d)
    off = scan_points[near] - pts[i[near]]
    along = np.abs((off * nrm[i[near]]).sum(axis=1))
    beside = np.sqrt(np.maximum(d[near] ** 2 - along ** 2, 0.0))
    above = beside < 3.0  # over the template point, not off to its side
    return float((along[above] < AGREEMENT_ON_MM).mean()) if above.any() else 0.0
