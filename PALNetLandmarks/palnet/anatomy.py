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
from typing import List, NamedTuple, Sequence

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


def describe_out_of_order(found: Sequence[OutOfOrder], replaced: Sequence[str] = (), most: int = 3) -> str:
    """One short clause for a scan's message ("" when the order holds): the ``most`` worst pairs
    and how many more (a scrambled answer breaks dozens; the list is in the prediction), and the
    landmarks ``replaced`` by the registration's answer to restore the order (:func:`restore_order`)."""
    if not found:
        return ""
    shown = ", ".join("{} {:.1f} mm below {}".format(o.upper, o.by_mm, o.lower) for o in found[:most])
    if len(found) > most:
        shown += " and {} more pair{}".format(len(found) - most, "s" if len(found) - most > 1 else "")
    if replaced:
        return "the network's answer out of anatomical order ({}): registration used for {} (check them)".format(
            shown, ", ".join(replaced))
    return "out of anatomical order: " + shown + " (check them)"


def restore_order(labels: Sequence[str], answer: np.ndarray, alternative: np.ndarray,
                  tolerance_mm: float = ORDER_TOLERANCE_MM):
    """``answer`` (L, 3; canonical mm, NaN for a missing landmark) with the landmarks that break
    the anatomical order taken from ``alternative`` (another method's answer, such as a template
    registration), and then each landmark that breaks the order with those, until it holds.

    Returns (the repaired answer, a mask of the landmarks taken from ``alternative``). When the
    order cannot be restored so (the alternative breaks it too), ``answer`` comes back as it is
    and the mask is empty: the caller reports the pairs, and nothing is changed on a guess."""
    pts = np.asarray(answer, dtype=np.float64)
    other = np.asarray(alternative, dtype=np.float64)
    index = {lab: i for i, lab in enumerate(labels)}
    taken = np.zeros(len(pts), dtype=bool)
    found = out_of_order(labels, pts, tolerance_mm)
    while found:
        more = [index[name] for name in out_of_order_labels(found) if not taken[index[name]]]
        if not more or not np.isfinite(other[more]).all():
            return pts, np.zeros(len(pts), dtype=bool)
        taken[more] = True
        found = out_of_order(labels, np.where(taken[:, None], other, pts), tolerance_mm)
    return np.where(taken[:, None], other, pts), taken
