"""Asymmetry: a landmark configuration against its mirrored, relabelled image.

The configuration is reflected, each landmark takes its mirror's label (``ex_R`` <-> ``ex_L``;
midline landmarks keep theirs), and the copy is superimposed on the original by the rigid
motion (rotation and translation, no scaling) that fits it best in the least-squares sense
(Procrustes). The average of the two is the nearest symmetric face; each landmark's
asymmetry vector runs from there to the landmark: half the gap between the landmark and its
superimposed mirror image. A perfectly symmetric face gives zero vectors. Summaries are root
mean squares of the vectors' lengths, in mm (Klingenberg et al. 2002 do the same with scaling
for shape; here sizes stay in mm).

Arrays are stacked ``(N, L, 3)`` in mm so that many perturbed copies are handled at once; a
NaN point is a missing landmark and is left out of the fit.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..datatypes import Landmarks


def mirror_index(labels: Sequence[str], protocol=None) -> np.ndarray:
    """For each label, the index of its mirror among ``labels`` (itself for a midline landmark),
    -1 where its partner is absent. The protocol's mirror pairs where it knows the label, else
    the ``_R``/``_L`` suffix."""
    from ..protocol import mirror_label, side_from_label
    index = {lab: i for i, lab in enumerate(labels)}
    known = set(protocol.labels) if protocol is not None else set()
    out = np.full(len(labels), -1, dtype=np.int64)
    for i, lab in enumerate(labels):
        if lab in known:
            partner = protocol.definition(lab).mirror
        else:
            partner = lab if side_from_label(lab) == "midline" else mirror_label(lab)
        if partner is not None and partner in index:
            out[i] = index[partner]
    return out


def asymmetry_vectors(points: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    """Asymmetry vectors ``(N, L, 3)`` of stacked configurations ``(N, L, 3)``; NaN for a landmark
    that is missing, has no mirror (``mirror`` -1) or whose mirror is missing, and for
    configurations with fewer than 3 usable landmarks."""
    gap, usable = _mirror_gap(np.asarray(points), mirror)
    gap *= 0.5
    gap[~usable] = np.nan
    return gap


def asymmetry_magnitudes(points: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    """The lengths ``(N, L)`` of :func:`asymmetry_vectors`, computed without them (for many configurations)."""
    gap, usable = _mirror_gap(np.asarray(points), mirror)
    mag = 0.5 * np.sqrt(np.einsum("nli,nli->nl", gap, gap))
    mag[~usable] = np.nan
    return mag


def _mirror_gap(p: np.ndarray, mirror: np.ndarray):
    """Each landmark minus its superimposed mirror image (N, L, 3), and where that is defined (N, L)."""
    has_mirror = mirror >= 0
    q = p[:, np.where(has_mirror, mirror, 0)]
    q[..., 0] *= -1  # reflected (any plane will do: the fit below turns it), relabelled
    finite = np.isfinite(p).all(axis=2)
    ok = finite & finite[:, np.where(has_mirror, mirror, 0)] & has_mirror[None, :]
    if ok.all():
        pz, qz = p, q  # the common case: no copies with the gaps filled
    else:
        pz, qz = np.where(ok[..., None], p, 0), np.where(ok[..., None], q, 0)
    count = ok.sum(axis=1).astype(p.dtype)  # (N,)
    safe = np.maximum(count, 1)[:, None]
    cp, cq = pz.sum(axis=1) / safe, qz.sum(axis=1) / safe
    # Kabsch: the proper rotation R minimising sum |R (q_i - cq) - (p_i - cp)|^2, for every
    # configuration at once; H = sum (q_i - cq)(p_i - cp)^T over the usable landmarks.
    h = np.matmul(qz.transpose(0, 2, 1), pz) - count[:, None, None] * cq[:, :, None] * cp[:, None, :]
    rot = kabsch_rotations(h)
    q -= cq[:, None]
    gap = np.matmul(q, rot.transpose(0, 2, 1))
    gap += cp[:, None]
    np.subtract(p, gap, out=gap)
    return gap, ok & (count >= 3)[:, None]


def kabsch_rotations(h: np.ndarray) -> np.ndarray:
    """The proper rotations R (N, 3, 3) maximising trace(R H) for each H (N, 3, 3) (H = sum q p^T:
    R q best matches p). The orthogonal polar factor of H by Newton's iteration, which for the
    well-conditioned H of faces converges in a few steps at half the cost of an SVD each; an SVD
    (with the reflection turned into a rotation) for the few it does not suit."""
    x = h.astype(np.float64)
    x = x * (np.sqrt(3.0) / np.maximum(np.linalg.norm(x, axis=(1, 2)), 1e-300))[:, None, None]
    with np.errstate(all="ignore"):
        for _ in range(POLAR_STEPS):
            c0 = np.cross(x[:, :, 1], x[:, :, 2])
            cof = np.stack([c0, np.cross(x[:, :, 2], x[:, :, 0]), np.cross(x[:, :, 0], x[:, :, 1])], axis=2)
            det = np.einsum("ni,ni->n", x[:, :, 0], c0)
            x = 0.5 * (x + cof / det[:, None, None])  # (X + X^-T) / 2
        gap = np.abs(np.matmul(x.transpose(0, 2, 1), x) - np.eye(3)).max(axis=(1, 2))
        bad = ~(gap < 1e-9) | ~(np.linalg.det(x) > 0)
    rot = x.transpose(0, 2, 1)  # the polar factor U V^T of H; R = V U^T
    if bad.any():
        u, _, vt = np.linalg.svd(h[bad].astype(np.float64))
        v = vt.transpose(0, 2, 1)
        d = np.sign(np.linalg.det(np.matmul(v, u.transpose(0, 2, 1))))
        v[:, :, 2] *= np.where(d == 0, 1, d)[:, None]
        rot[bad] = np.matmul(v, u.transpose(0, 2, 1))  # V diag(1, 1, d) U^T
    return rot.astype(h.dtype, copy=False)


POLAR_STEPS = 10


@dataclass
class Asymmetry:
    """Asymmetry of one face, in mm in the frame of its landmarks.

    ``vectors`` (L, 3) and ``magnitudes`` (L,): per landmark of the face, NaN where it or its
    mirror partner is missing, or it has none; ``symmetric`` (L, 3): the nearest symmetric
    face (a landmark without a vector stays where it is); ``regions``: root mean square
    magnitude per protocol region; ``total``: the same over every paired landmark (the total
    asymmetry index). A region or the total is None when one of its landmarks is missing
    (absent from the face or NaN; listed in ``missing``)."""

    labels: List[str]
    vectors: np.ndarray
    magnitudes: np.ndarray
    symmetric: np.ndarray
    regions: Dict[str, Optional[float]]
    total: Optional[float]
    missing: Tuple[str, ...] = ()
    units: str = "mm"


def rms(magnitudes: np.ndarray, axis=-1) -> np.ndarray:
    """Root mean square along ``axis``; NaN if any value is NaN (a missing landmark empties it)."""
    m = np.asarray(magnitudes, dtype=np.float64)
    return np.sqrt(np.mean(m * m, axis=axis))


def asymmetry(landmarks: Landmarks, protocol=None) -> Asymmetry:
    """The asymmetry of ``landmarks`` (any units; the answer is in mm).

    ``protocol`` gives the mirror pairs and regions (default: the shipped protocol; labels it
    does not know pair by their ``_R``/``_L`` suffix and belong to region "other").
    """
    from ..protocol import DEFAULT_REGION, default_protocol
    if protocol is None:
        protocol = default_protocol()
    lm = landmarks.in_units("mm")
    labels = list(lm.labels)
    # The protocol's landmarks the face lacks count as missing (NaN), not as unpaired.
    absent = [lab for lab in protocol.labels if lab not in set(labels)]
    every = labels + absent
    points = np.concatenate([lm.points, np.full((len(absent), 3), np.nan)])
    mirror = mirror_index(every, protocol)
    vec = asymmetry_vectors(points[None], mirror)[0]
    mag = np.linalg.norm(vec, axis=1)
    paired = mirror >= 0
    present = np.isfinite(points).all(axis=1)
    missing = tuple(lab for lab, p, ok in zip(every, paired, present) if p and not ok)
    known = set(protocol.labels)
    region_of = [protocol.region_of(lab) if lab in known else DEFAULT_REGION for lab in every]
    regions = {}  # type: Dict[str, Optional[float]]
    for region in list(protocol.regions) + [DEFAULT_REGION]:
        idx = [i for i, r in enumerate(region_of) if r == region and paired[i]]
        if idx and region not in regions:
            regions[region] = _number(rms(mag[idx]))
    total = _number(rms(mag[paired])) if paired.any() else None
    n = len(labels)
    return Asymmetry(labels, vec[:n], mag[:n], lm.points - np.nan_to_num(vec[:n]), regions, total, missing)


def _number(x) -> Optional[float]:
    x = float(x)
    return x if np.isfinite(x) else None
