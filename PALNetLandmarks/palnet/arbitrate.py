"""Never worse than registration: the network's answer checked against a template registration.

The network has learned faces from one generator; on a face unlike them it can be further off
than a plain template registration (rigid alignment, then Coherent Point Drift of the face
template onto the scan; :func:`palnet.registration.register_template`). A model may carry a rule,
learned on validation scans (``tools/learn_arbitration.py``), for when to run that registration
and how far to trust it per landmark:

- **trigger**: the registration (about a second) runs only when the scan's fit is not "ok" or
  the network is unsure: the mean spread of its perturbed runs (the spread behind the
  confidence) above ``trigger_spread_mm``, learned as the 90th percentile on validation scans.
  On faces like the training ones it runs on about one in ten.
- **combination**, per landmark k: with d the distance between the two answers,
  ``answer = network + w_k(d) (registration - network)``, ``w_k(d) = weight_k *
  clip((d - onset_k) / onset_k, 0, 1)``: where the two agree the network's precise answer
  stays; where they disagree by much more than the network's usual error, the answer moves
  towards the registration, as far as the validation scans showed it should.

Each landmark's source is reported: "network", "registration" (w = 1) or "both".
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .errors import PalnetError
from .status import OK

NETWORK, REGISTRATION, BOTH = "network", "registration", "both"
# A landmark of an answer out of anatomical order placed where the shape prior puts it from the
# others (palnet.anatomy.restore_order), and how its description says so.
OTHERS = "others"
SOURCE_TEXT = {REGISTRATION: "registration", BOTH: "both", OTHERS: "the other landmarks"}
ONSETS_MM = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)  # the grid the rule is learned on
WEIGHTS = (0.25, 0.5, 0.75, 1.0)
# A landmark keeps the network unless the rule lowers its validation error by this much (mm):
# a change must earn its place on the validation scans, not fit their noise.
MIN_GAIN_MM = 0.02


@dataclass
class Rule:
    trigger_spread_mm: float
    onset_mm: np.ndarray  # (L,) inf: never
    weight: np.ndarray  # (L,)
    n_scans: int = 0

    def to_dict(self) -> dict:
        return {"trigger_spread_mm": round(float(self.trigger_spread_mm), 4),
                "onset_mm": [None if not np.isfinite(x) else round(float(x), 4) for x in self.onset_mm],
                "weight": [round(float(x), 4) for x in self.weight], "n_scans": int(self.n_scans)}


def rule_from(metadata: dict, n_landmarks: int, source=None) -> Optional[Rule]:
    """The model's arbitration rule, or None when it has none."""
    entry = metadata.get("arbitration")
    if not entry:
        return None
    try:
        onset = np.array([np.inf if x is None else float(x) for x in entry["onset_mm"]], dtype=np.float64)
        weight = np.asarray(entry["weight"], dtype=np.float64)
        trigger = float(entry["trigger_spread_mm"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PalnetError("model metadata has an unusable arbitration rule ({})".format(exc), source) from None
    if onset.shape != (n_landmarks,) or weight.shape != (n_landmarks,) or not np.isfinite(weight).all() \
            or not ((weight >= 0) & (weight <= 1)).all() or not (onset > 0).all() or not trigger >= 0:
        raise PalnetError("model metadata has an unusable arbitration rule (needs {} onsets > 0, weights in [0, 1] "
                          "and a trigger >= 0)".format(n_landmarks), source)
    return Rule(trigger, onset, weight, int(entry.get("n_scans", 0)))


def triggered(rule: Rule, spread_mm: np.ndarray, status: str) -> bool:
    return status != OK or float(np.mean(spread_mm)) > rule.trigger_spread_mm


def weights(rule: Rule, network: np.ndarray, registration: np.ndarray) -> np.ndarray:
    """w_k (L,) for these two answers (canonical mm)."""
    d = np.linalg.norm(network - registration, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ramp = np.where(np.isfinite(rule.onset_mm), np.clip((d - rule.onset_mm) / rule.onset_mm, 0.0, 1.0), 0.0)
    return rule.weight * ramp


def combine(rule: Rule, network: np.ndarray, registration: np.ndarray) -> Tuple[np.ndarray, List[str]]:
    """(answer (L, 3), each landmark's source). Where the registration has no answer (NaN: it
    failed), the network's stays."""
    placed = np.isfinite(registration).all(axis=1)
    w = np.where(placed, np.nan_to_num(weights(rule, network, registration)), 0.0)
    answer = network + w[:, None] * np.where(placed[:, None], registration - network, 0.0)
    return answer, sources(w)


def sources(w: np.ndarray) -> List[str]:
    return [NETWORK if x <= 0 else REGISTRATION if x >= 1 else BOTH for x in w]


def learn_rule(network: np.ndarray, registration: np.ndarray, truth: np.ndarray, spread: np.ndarray,
               trigger_quantile: float = 0.9, swap: Optional[np.ndarray] = None) -> Rule:
    """The rule that minimises each landmark's mean error on validation scans: ``network``,
    ``registration``, ``truth`` (N, L, 3) canonical mm, ``spread`` (N, L). The trigger is the
    ``trigger_quantile`` of the scans' mean spread: the registration runs on the least sure
    tenth of faces like the validation ones (and on every face the fit calls doubtful).

    ``swap`` (the protocol's mirror pairs, :func:`palnet.priors.mirror_pairs`): each side
    landmark and its partner share one rule, learned on both, so that a face and its mirror
    image are treated alike (learned apart, a few dozen scans gave the left eye a rule and the
    right one none)."""
    n, n_lm = network.shape[:2]
    d = np.linalg.norm(network - registration, axis=2)  # (N, L)
    err_net = np.linalg.norm(network - truth, axis=2)  # NaN where a scan lacks the landmark
    onset = np.full(n_lm, np.inf)
    weight = np.zeros(n_lm)
    for k in range(n_lm):
        pair = sorted({k, int(swap[k])}) if swap is not None else [k]
        if pair[0] != k:
            continue  # learned with its partner
        if not np.isfinite(err_net[:, pair]).all():  # some validation scans lack it (a face-only capture's ears): no rule
            continue
        best = err_net[:, pair].mean() - MIN_GAIN_MM
        for a in ONSETS_MM:
            ramp = np.clip((d[:, pair] - a) / a, 0.0, 1.0)  # (N, 1 or 2)
            for w in WEIGHTS:
                moved = network[:, pair] + (w * ramp)[..., None] * (registration[:, pair] - network[:, pair])
                e = np.linalg.norm(moved - truth[:, pair], axis=2).mean()
                if e < best:
                    best, onset[pair], weight[pair] = e, a, w
    trigger = float(np.quantile(spread.mean(axis=1), trigger_quantile)) if n else 0.0
    return Rule(trigger, onset, weight, n)


def describe_sources(labels: Sequence[str], src: Sequence[str]) -> str:
    moved = [lab for lab, s in zip(labels, src) if s != NETWORK]
    return "" if not moved else "registration used for {}".format(", ".join(moved))
