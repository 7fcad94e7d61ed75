"""Anatomical order: which landmarks lie above which on every face, and the answers that break it.

A face's landmarks keep an order from top to bottom that no face breaks: the upper lip's
midpoint (ls) lies above the stomion (sto), the stomion above the lower lip's (li), the upper
eyelid's highest point (ps) above the lower eyelid's lowest (pi). An answer in which a landmark
lies clearly below one that belongs beneath it is wrong in one of the two, whatever the
network's spread says: on a real face-only scan the network once put the upper lip's point on
the lower lip, 4 mm below the stomion, with the usual confidence.

Each chain lists landmarks from top to bottom by their definitions (Farkas), ``{side}`` standing
for ``R`` and ``L``; a protocol that lacks some of them is checked on the rest. Heights are read
along the canonical frame's +y (up the face; the face template's frame). Imports only numpy.
"""
from itertools import combinations
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

VERTICAL_CHAINS = (
    ("tr", "g", "n", "prn", "c", "sn", "ls", "sto", "li", "sl", "pg", "me"),  # the midline
    ("sn", "cph_{side}", "sto"),  # the crests of the philtrum, just above the vermilion line
    ("os_{side}", "ps_{side}", "pi_{side}", "or_{side}"),  # brow, eyelids, lower orbit
    ("sa_{side}", "obs_{side}", "t_{side}", "sba_{side}"),  # the ear, top to lobe
)
# A pair counts as out of order when the lower landmark lies more than this above the upper one.
# The truths of 390 synthetic scans (200 held-out, 100 of the held-out warp family, 90 of the
# calibration set, every expression) come no closer to breaking any pair than -1.45 mm (li and
# sl of a pressed mouth); 2 mm leaves room for that and for the manual placement of real scans.
ORDER_TOLERANCE_MM = 2.0


class OutOfOrder(NamedTuple):
    upper: str  # the landmark that belongs above
    lower: str  # the one that belongs below
    by_mm: float  # how far the lower one lies above the upper one


def order_pairs(labels: Sequence[str]):
    """(upper index, lower index) of every pair of ``labels`` that the chains order, each once."""
    index = {lab: i for i, lab in enumerate(labels)}
    pairs = []
    for chain in VERTICAL_CHAINS:
        for side in ("R", "L") if any("{side}" in name for name in chain) else ("",):
            present = [index[n] for n in (name.format(side=side) for name in chain) if n in index]
            pairs.extend((a, b) for k, a in enumerate(present) for b in present[k + 1:])
    return list(dict.fromkeys(pairs))


def out_of_order(labels: Sequence[str], canonical: np.ndarray,
                 tolerance_mm: float = ORDER_TOLERANCE_MM) -> List[OutOfOrder]:
    """The pairs of ``labels`` whose answers ``canonical`` (L, 3; canonical mm, NaN for a missing
    landmark) break the anatomical order by more than ``tolerance_mm``, worst first."""
    pts = np.asarray(canonical, dtype=np.float64)
    found = []
    for a, b in order_pairs(labels):
        by = float(pts[b, 1] - pts[a, 1])
        if np.isfinite(by) and by > tolerance_mm:
            found.append(OutOfOrder(labels[a], labels[b], by))
    return sorted(found, key=lambda o: -o.by_mm)


def out_of_order_labels(found: Sequence[OutOfOrder]) -> List[str]:
    """Each landmark of ``found`` once, in the order they first appear."""
    return list(dict.fromkeys(name for o in found for name in (o.upper, o.lower)))


def describe_out_of_order(found: Sequence[OutOfOrder], replaced: Sequence[str] = (), most: int = 3,
                          from_others: Sequence[str] = ()) -> str:
    """One short clause for a scan's message ("" when the order holds): the ``most`` worst pairs
    and how many more (a scrambled answer breaks dozens; the list is in the prediction), and the
    landmarks that now stand in to restore the order (:func:`restore_order`): ``from_others``
    placed where the rest of the face puts them (the shape prior), ``replaced`` taken from the
    registration."""
    if not found:
        return ""
    shown = ", ".join("{} {:.1f} mm below {}".format(o.upper, o.by_mm, o.lower) for o in found[:most])
    if len(found) > most:
        shown += " and {} more pair{}".format(len(found) - most, "s" if len(found) - most > 1 else "")
    done = (["{} placed where the other landmarks put {}".format(", ".join(from_others),
                                                                 "it" if len(from_others) == 1 else "them")]
            if from_others else []) + (["registration used for " + ", ".join(replaced)] if replaced else [])
    if done:
        return "the network's answer out of anatomical order ({}): {} (check them)".format(shown, "; ".join(done))
    return "out of anatomical order: " + shown + " (check them)"


StandIn = Union[np.ndarray, Callable[[np.ndarray], np.ndarray]]


def restore_order(labels: Sequence[str], answer: np.ndarray, stand_in: StandIn,
                  tolerance_mm: float = ORDER_TOLERANCE_MM, most: Optional[int] = None):
    """``answer`` (L, 3; canonical mm, NaN for a missing landmark) with the fewest landmarks taken
    from ``stand_in`` that restore the anatomical order.

    ``stand_in`` is another method's answer (L, 3), such as a template registration's, or a
    function that, given a mask (L,) of landmarks, says where the rest of the answer puts them
    (L, 3; the shape prior filling them in from the others, :func:`palnet.priors.apply_shape_prior`).

    The landmarks that break the order are taken from the stand-in, then each landmark that
    breaks it with those, until it holds. Of the landmarks so taken, the fewest that restore the
    order on their own are kept, and of as many, those whose answers lie farthest from their
    stand-ins: of a pair out of order one is wrong, and it is the one the rest of the face
    disagrees with. A network that put the upper lip's point on the lower lip is wrong there, not
    at the stomion below it; taking both, and the lower lip's point that the stand-in stomion then
    breaks the order with, replaces two right answers (on the real face-only scan ``fran_cut`` the
    registration moved them 8 and 13 mm down from where the network had them right).

    Returns (the repaired answer, a mask of the landmarks taken from the stand-in). When the
    order cannot be restored so (the stand-in breaks it too), or only by taking more than
    ``most`` landmarks, ``answer`` comes back as it is and the mask is empty: the caller reports
    the pairs, and nothing is changed on a guess."""
    pts = np.asarray(answer, dtype=np.float64)
    place = stand_in if callable(stand_in) else (lambda mask, other=np.asarray(stand_in, dtype=np.float64): other)
    index = {lab: i for i, lab in enumerate(labels)}
    none = np.zeros(len(pts), dtype=bool)
    taken = none.copy()
    found = out_of_order(labels, pts, tolerance_mm)
    while found:
        more = [index[name] for name in out_of_order_labels(found) if not taken[index[name]]]
        if not more:
            return pts, none
        taken[more] = True
        other = place(taken)
        if not np.isfinite(other[taken]).all():
            return pts, none
        found = out_of_order(labels, np.where(taken[:, None], other, pts), tolerance_mm)
    fewest = _fewest_stand_ins(labels, pts, place, np.flatnonzero(taken), tolerance_mm)
    if fewest is not None:
        taken = none.copy()
        taken[list(fewest)] = True
    if most is not None and taken.sum() > most:
        return pts, none
    return np.where(taken[:, None], place(taken), pts), taken


# restore_order looks for the fewest stand-ins among at most this many landmarks (2^10 trials; with
# the shape prior's fills, 0.18 ms each, about 0.2 s at worst); an answer that breaks the order in
# more places takes them all.
MOST_STAND_IN_CHOICES = 10


def _fewest_stand_ins(labels: Sequence[str], pts: np.ndarray, place: Callable[[np.ndarray], np.ndarray],
                      chosen: np.ndarray, tolerance_mm: float) -> Optional[Tuple[int, ...]]:
    """The smallest subset of ``chosen`` whose stand-ins (``place``) restore the order, of those
    as small the one whose answers lie farthest from their stand-ins; None when only all of them
    do, or there are too many to choose from."""
    if len(chosen) > MOST_STAND_IN_CHOICES:
        return None
    upper, lower = np.array(order_pairs(labels), dtype=int).reshape(-1, 2).T
    for size in range(1, len(chosen)):
        best, farthest = None, -1.0
        for subset in combinations(chosen.tolist(), size):
            mask = np.zeros(len(pts), dtype=bool)
            mask[list(subset)] = True
            other = place(mask)
            if not np.isfinite(other[mask]).all():
                continue
            y = np.where(mask, other[:, 1], pts[:, 1])
            with np.errstate(invalid="ignore"):
                broken = (y[lower] - y[upper] > tolerance_mm).any()  # as out_of_order: NaN breaks nothing
            apart = float(np.linalg.norm(other[mask] - pts[mask], axis=1).sum())
            if not broken and apart > farthest:
                best, farthest = subset, apart
        if best is not None:
            return best
    return None
