"""The 50 palnet landmarks on the ICT-FaceKit head topology: exact ground truth for synthetic scans.

Every ICT head (neutral + identity modes + expression modes) shares one topology,
so a landmark is defined once on that topology and evaluated per head by a rule:

* ``vertex``: a fixed vertex chosen on the neutral head; the model's own iBUG-68
  vertices where they are the protocol point (eye and mouth corners, upper and
  lower vermilion midpoints, stomion).
* ``extreme``: the candidate farthest along a direction of the ICT frame (+y up,
  +z anterior, +x the subject's left): pronasale = most anterior midline point
  near the nose tip, superaurale = highest point of the auricle, ...
* ``deepest``: the candidate farthest from the chord between two landmarks found
  before, on a given side of it, among candidates that project inside the chord
  (nasion = midline point deepest behind the chord glabella-pronasale).
* ``level``: among the candidates at a height interpolated between two landmarks,
  the extreme along a direction (frontotemporale), or the candidate closest to
  that level (columella: at the depth of the nostril tips).

Candidate sets (a radius around the rule's template vertex, the midline, an
eyelid margin, the auricle, the nasal ala, ...) are built once from the neutral
head; per head only the rules are evaluated, vectorised over the landmarks
(about 1 ms a head). Results are vertices of the head, so they lie exactly on its
surface; ``ict_landmark_locations`` gives them as triangle + barycentric weights
(triangle indices into the model's ``triangles`` array) for finding the same
point on a remeshed copy of the surface.

Bilateral rules are written for the subject's left (+x) and mirrored for the
right (the neutral head is mirror-symmetric to 0.05 mm). Directions are fixed in
the ICT frame: ICT heads carry no head pose. See ``DEFINITIONS`` for each label.
"""
import functools
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .datatypes import Landmarks, Mesh
from .errors import PalnetError
from .geometry import edges_and_border
from .resources import default_ict_path

MIDLINE_NAMES = ("tr", "g", "n", "prn", "c", "sn", "ls", "sto", "li", "sl", "pg", "me")
BILATERAL_NAMES = ("ft", "os", "ps", "pi", "en", "ex", "or", "zy", "t", "go", "ac", "al", "sbal",
                   "cph", "ch", "sa", "sba", "pa", "obs")
LABELS = list(MIDLINE_NAMES) + [
    "{}_{}".format(b, s) for b in BILATERAL_NAMES for s in ("R", "L")
]
_LABEL_SET = frozenset(LABELS)

# One line per landmark: the protocol definition, then how it is placed on an ICT head.
DEFINITIONS: Dict[str, str] = {
    "tr": "trichion, hairline midpoint. ICT: midline vertex on the upper edge of the forehead skin "
          "(the model's narrow-face region, where the scans' hairline sits)",
    "g": "glabella, most prominent midline point between the brows. ICT: most anterior midline "
         "point within 12 mm of the template",
    "n": "nasion, deepest point of the nasofrontal angle. ICT: midline point farthest behind the "
         "chord glabella-pronasale",
    "prn": "pronasale, most anterior point of the nasal tip. ICT: most anterior midline point near "
           "the tip",
    "c": "columella, point on the columella crest at the level of the nostril tips. ICT: midline "
         "columella point whose depth (z) is closest to that of the nostril tips (the most "
         "anterior points of the nostril rims)",
    "sn": "subnasale, where the columella meets the upper lip. ICT: midline point farthest behind "
          "the chord pronasale-labiale superius",
    "ls": "labiale superius, midpoint of the upper vermilion line. ICT: iBUG 51 vertex",
    "sto": "stomion, midpoint of the lip closure. ICT: iBUG 62 vertex (upper inner-lip midpoint)",
    "li": "labiale inferius, midpoint of the lower vermilion line. ICT: iBUG 57 vertex",
    "sl": "sublabiale, deepest midline point of the labiomental fold. ICT: on the midline profile "
          "between labiale inferius and menton, the point deepest under the line that touches "
          "both lower lip and chin (the template vertex where the profile has no fold)",
    "pg": "pogonion, most anterior midpoint of the chin. ICT: midline point farthest in front of "
          "the chord sublabiale-menton (the chin's prominence, also on a receding chin)",
    "me": "menton, lowest midline point of the chin. ICT: extreme midline chin point along "
          "down-and-30-degrees-forward (the chin's lower curve, not the submental slope)",
    "ft": "frontotemporale, where the forehead turns into the temple. ICT: at half height between "
          "orbitale superius and trichion, the forehead point whose normal is 50 degrees lateral",
    "os": "orbitale superius, highest point of the upper orbital margin (brow ridge) above the "
          "pupil. ICT: most anterior point of the brow ridge on the vertical through the pupil",
    "ps": "palpebrale superius, highest point of the upper eyelid margin. ICT: highest vertex of "
          "the "
          "upper-lid margin loop",
    "pi": "palpebrale inferius, lowest point of the lower eyelid margin. ICT: lowest vertex of the "
          "lower-lid margin loop",
    "en": "endocanthion, inner eye corner. ICT: iBUG 39/42 vertex",
    "ex": "exocanthion, outer eye corner. ICT: iBUG 36/45 vertex",
    "or": "orbitale, lowest point of the infraorbital margin. ICT: on the vertical through the "
          "pupil, the point farthest behind the chord from palpebrale inferius to the cheek below "
          "(the lid-cheek groove over the rim)",
    "zy": "zygion, most lateral point of the zygomatic arch. ICT: most lateral cheek point "
          "between tragion and orbitale heights, 15 mm or more in front of the "
          "tragion",
    "t": "tragion, notch just above the tragus. ICT: template vertex on the outer edge of the "
         "supratragal notch (the part a camera beside the head sees)",
    "go": "gonion, most lateral-inferior point of the mandibular angle. ICT: template vertex "
          "(the model's jaw angle is smooth; no extremal rule is stable there)",
    "ac": "alar curvature point, most lateral point of the curved alar base line. ICT: alar "
          "crease vertex farthest lateral-posterior-inferior",
    "al": "alare, most lateral point of the alar contour. ICT: most lateral vertex of the ala "
          "(inside the alar crease)",
    "sbal": "subalare, where the alar base meets the upper lip. ICT: lowest vertex of the alar "
            "base crease",
    "cph": "crista philtri, philtral ridge point just above the vermilion line. ICT: template "
           "vertex one row above the upper vermilion line, 5.7 mm from the midline",
    "ch": "cheilion, mouth corner. ICT: iBUG 48/54 vertex",
    "sa": "superaurale, highest point of the ear's free margin. ICT: highest auricle vertex",
    "sba": "subaurale, lowest point of the ear lobe. ICT: lowest auricle vertex",
    "pa": "postaurale, most posterior point of the ear's free margin. ICT: most posterior auricle "
          "vertex",
    "obs": "otobasion superius, where the upper helix attaches to the head. ICT: template vertex",
}

# Landmark rules; bilateral ones for the subject's left (+x). Vertex numbers are ICT vertices
# chosen on the neutral head (see DEFINITIONS and Resources/docs/protocol_*.png).
_RULES: Dict[str, dict] = {
    "tr": dict(kind="vertex", vertex=1643),
    "g": dict(kind="extreme", vertex=1398, within="midline", radius=12.0, direction=(0, 0, 1)),
    "prn": dict(kind="extreme", vertex=4841, within="midline", radius=10.0, direction=(0, 0, 1)),
    "n": dict(kind="deepest", vertex=978, within="midline", radius=15.0, chord=("g", "prn"),
              away=(0, 0, -1)),
    "sn": dict(kind="deepest", vertex=1147, within="midline", radius=10.0, chord=("prn", "ls"),
               away=(0, 0, -1)),
    "c": dict(kind="level", vertex=4949, within="midline", radius=10.0,
              level=("nostril_tip_R", "nostril_tip_L", 0.5), axis=(0, 0, 1), between=("prn", "sn")),
    "ls": dict(kind="vertex", vertex=0),
    "sto": dict(kind="vertex", vertex=5533),
    "li": dict(kind="vertex", vertex=5518),
    "sl": dict(kind="fold", vertex=10, within="profile", between=("li", "me")),
    "pg": dict(kind="deepest", vertex=963, within="midline", radius=20.0, chord=("sl", "me"),
               away=(0, 0, 1)),
    "me": dict(kind="extreme", vertex=965, within="midline", radius=15.0,
               direction=(0, -0.866, 0.5)),
    "ps": dict(kind="extreme", vertex=4190, within="upper_lid", direction=(0, 1, 0)),
    "pi": dict(kind="extreme", vertex=3728, within="lower_lid", direction=(0, -1, 0)),
    "en": dict(kind="vertex", vertex=3742),
    "ex": dict(kind="vertex", vertex=3721),
    "os": dict(kind="extreme", vertex=2368, within="brow_strip", direction=(0, 0, 1)),
    "or": dict(kind="deepest", vertex=3308, within="cheek_strip", chord=("pi", "cheek_low"),
               away=(0, 0, -1)),
    "ft": dict(kind="level", vertex=2563, within="forehead", level=("os", "tr", 0.5),
               direction=(0.766, 0, 0.643)),
    "zy": dict(kind="extreme", vertex=3493, within="zygoma", direction=(1, 0, 0)),
    "t": dict(kind="vertex", vertex=6770),
    "go": dict(kind="vertex", vertex=9179),
    "al": dict(kind="extreme", vertex=5214, within="ala", direction=(1, 0, 0)),
    "ac": dict(kind="extreme", vertex=5098, within="alar_crease", direction=(0.5, -0.5, -0.7)),
    "sbal": dict(kind="extreme", vertex=5024, within="alar_crease", direction=(0, -1, 0)),
    "cph": dict(kind="vertex", vertex=4264),
    "ch": dict(kind="vertex", vertex=6213),
    "sa": dict(kind="extreme", vertex=6844, within="auricle", direction=(0, 1, 0)),
    "sba": dict(kind="extreme", vertex=6720, within="auricle", direction=(0, -1, 0)),
    "pa": dict(kind="extreme", vertex=6836, within="auricle", direction=(0, 0, -1)),
    "obs": dict(kind="vertex", vertex=7107),
}
# Helper points (not landmarks) that rules refer to; all bilateral.
_HELPER_RULES: Dict[str, dict] = {
    # A cheek point on the vertical through the pupil, 25 mm below the lower lid: end of the
    # chord whose deepest point is orbitale.
    "cheek_low": dict(kind="vertex", vertex=4411),
    # Nostril tip: most anterior point of the front arc of the nostril rim (seen from below).
    "nostril_tip": dict(kind="extreme", vertex=5042, within="nostril_rim", direction=(0, 0, 1)),
}
# Front arc of the left nostril's rim (the model's topology; the right one is its mirror).
_NOSTRIL_RIM_LEFT = (5060, 5489, 5042, 5040, 5428, 5429, 5430, 5391, 5490)
# Fixed vertices that are the model's own iBUG-68 landmarks (checked against the data file).
_IBUG68 = {"ls": 51, "sto": 62, "li": 57, "en": 42, "ex": 45, "ch": 54}

SKIN_STOP = 11248  # ICT regions `face` [0, 9409) and `head_and_neck` [9409, 11248)
NARROW_FACE_STOP = 6706
EYEBALL_RANGES = ((21451, 23021), (23021, 24591))
_EAR_LEFT = (6706, 7433)  # the model's left-ear patch (auricle plus surrounding skin)
_NOSE_BLOCK = (4500, 5500)  # the model's nose patch: its border is the alar crease


def scanned_triangle_mask(triangles: np.ndarray, eyeballs: bool = True) -> np.ndarray:
    """Triangles of the ICT model that a surface scan sees: skin, optionally the eyeballs."""
    t = np.asarray(triangles)
    keep = (t < SKIN_STOP).all(axis=1)
    if eyeballs:
        for a, b in EYEBALL_RANGES:
            keep |= ((t >= a) & (t < b)).all(axis=1)
    return keep


@functools.lru_cache(maxsize=4)
def _load_ict(path: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    import os

    if not os.path.exists(path):
        raise PalnetError("ICT-FaceKit model not found (set PALNET_ICT to ict_facekit.npz)", path)
    with np.load(path) as data:
        return (data["neutral_mm"].astype(np.float64), data["triangles"].astype(np.int64),
                data["landmarks68_vertex_idx"].astype(np.int64))


class _Template:
    """Everything derived once from the neutral head: mirror map, candidate sets, batches."""

    def __init__(self, neutral: np.ndarray, triangles: np.ndarray, ibug68: np.ndarray):
        from scipy.spatial import cKDTree

        for name, k in _IBUG68.items():
            if int(ibug68[k]) != _RULES[name]["vertex"]:
                raise PalnetError("ICT-FaceKit data differ from the topology the landmarks were "
                                  "defined on (iBUG {} is vertex {}, expected {})".format(
                                      k, int(ibug68[k]), _RULES[name]["vertex"]))

        self.neutral = neutral
        self.triangles = triangles
        self.n_vertices = len(neutral)
        skin_tri = (triangles < SKIN_STOP).all(axis=1)
        self.skin_triangles = triangles[skin_tri]
        skin = np.arange(SKIN_STOP)
        tree = cKDTree(neutral[:SKIN_STOP])
        _, self.mirror = tree.query(neutral[:SKIN_STOP] * np.array([-1.0, 1.0, 1.0]))
        # A skin triangle for each skin vertex, to report vertices as (triangle, barycentric).
        tri_index = np.flatnonzero(skin_tri)
        self.vertex_triangle = np.full(SKIN_STOP, -1, dtype=np.int64)
        self.vertex_corner = np.zeros(SKIN_STOP, dtype=np.int64)
        for corner in (2, 1, 0):
            self.vertex_triangle[triangles[tri_index, corner]] = tri_index
            self.vertex_corner[triangles[tri_index, corner]] = corner
        self.sets = self._candidate_sets(skin)
        self._compile()

    # -- candidate sets on the neutral head (left side; right = mirror) --------------------------
    def _adjacency(self):
        from scipy.sparse import coo_matrix

        t = self.skin_triangles
        e = np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]])
        a = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(SKIN_STOP, SKIN_STOP)).tocsr()
        return ((a + a.T) > 0).astype(np.int8)

    @staticmethod
    def _rings(adj, start: np.ndarray, n: int) -> np.ndarray:
        """Mask of the vertices at most ``n`` edges away from ``start``."""
        seen = np.zeros(adj.shape[0], dtype=bool)
        seen[start] = True
        for _ in range(n):
            seen |= (adj @ seen.astype(np.int8)) > 0
        return seen

    def _mouth_opening(self, boundary: np.ndarray) -> np.ndarray:
        """The skin's border vertices around the mouth opening (the lips' inner surfaces end there)."""
        v = self.neutral
        return boundary[(np.abs(v[boundary, 0]) < 30) & (v[boundary, 1] < -20) & (v[boundary, 1] > -50)
                        & (v[boundary, 2] > 80)]

    def _boundary_vertices(self) -> np.ndarray:
        return np.flatnonzero(edges_and_border(self.skin_triangles, len(self.neutral))[1])

    def _candidate_sets(self, skin: np.ndarray) -> Dict[str, np.ndarray]:
        v = self.neutral
        x, y, z = v[:SKIN_STOP, 0], v[:SKIN_STOP, 1], v[:SKIN_STOP, 2]
        left = x > 0.5
        adj = self._adjacency()
        boundary = self._boundary_vertices()

        # Midline of the outer face: x = 0 on the neutral head, less the lips' inner surfaces
        # (the first 7 rings of vertices around the skin's mouth opening).
        inner_lip = self._rings(adj, self._mouth_opening(boundary), 6)
        sets = {"midline": skin[(np.abs(x) < 1e-3) & ~inner_lip]}
        # The facial profile below the nose as an ordered chain (top to bottom on the neutral
        # head, where it is a function of height), for rules that need the curve's order.
        prof = sets["midline"][(y[sets["midline"]] < 0) & (y[sets["midline"]] > -95)
                               & (z[sets["midline"]] > 60)]
        sets["profile"] = prof[np.argsort(-y[prof])]

        # Eyelid margins: the second ring of vertices around the skin's eye opening.
        eye_open = boundary[(v[boundary, 0] > 10) & (v[boundary, 1] > 20) & (v[boundary, 1] < 50)]
        margin = skin[self._rings(adj, eye_open, 2) & ~self._rings(adj, eye_open, 1)]
        en, ex = v[_RULES["en"]["vertex"]], v[_RULES["ex"]["vertex"]]
        inside = (v[margin, 0] > en[0] + 1.0) & (v[margin, 0] < ex[0] - 1.0)
        margin = margin[inside]
        line_y = en[1] + (v[margin, 0] - en[0]) / (ex[0] - en[0]) * (ex[1] - en[1])
        sets["upper_lid"] = margin[v[margin, 1] > line_y]
        sets["lower_lid"] = margin[v[margin, 1] < line_y]

        # Vertical strips through the pupil (most anterior eyeball vertex), above and below the eye.
        a, b = EYEBALL_RANGES[0]
        eyeball = np.arange(a, b)
        pupil = v[eyeball[np.argmax(v[eyeball, 2])]]
        if pupil[0] < 0:
            pupil = pupil * np.array([-1.0, 1.0, 1.0])
        ps_y = v[sets["upper_lid"], 1].max()
        pi_y = v[sets["lower_lid"], 1].min()
        strip = (np.abs(x - pupil[0]) < 2.5) & (z > pupil[2] - 15) & (skin < NARROW_FACE_STOP)
        sets["brow_strip"] = skin[strip & (y > ps_y + 9) & (y < ps_y + 28)]
        sets["cheek_strip"] = skin[strip & (y < pi_y - 4) & (y > pi_y - 26)]

        # Forehead band candidates for frontotemporale.
        sets["forehead"] = skin[left & (x > 25) & (x < 72) & (y > 50) & (y < 110) & (z > 20)]

        # Auricle: ear-patch vertices standing > 5 mm off a smooth fit of the head around the ear.
        ear = np.arange(*_EAR_LEFT)
        lo, hi = v[ear].min(0), v[ear].max(0)
        near = skin[(x > 30) & (y > lo[1] - 30) & (y < hi[1] + 30)
                    & (z > lo[2] - 30) & (z < hi[2] + 30)]
        outside = ~((v[near, 1] > lo[1] - 3) & (v[near, 1] < hi[1] + 3)
                    & (v[near, 2] > lo[2] - 3) & (v[near, 2] < hi[2] + 3))

        def cubic(p):
            yy, zz = p[:, 1], p[:, 2]
            return np.stack([np.ones_like(yy), yy, zz, yy * yy, yy * zz, zz * zz,
                             yy ** 3, yy * yy * zz, yy * zz * zz, zz ** 3], axis=1)

        ring_pts = v[near[outside]]
        coef, *_ = np.linalg.lstsq(cubic(ring_pts), ring_pts[:, 0], rcond=None)
        protrusion = v[near, 0] - cubic(v[near]) @ coef
        sets["auricle"] = near[(protrusion > 5.0) & (v[near, 1] > lo[1] - 5)
                               & (v[near, 1] < hi[1] + 5)]
        ear_all = np.zeros(SKIN_STOP, dtype=bool)
        ear_all[ear] = True
        ear_all[sets["auricle"]] = True

        # Zygoma: lateral cheek between tragion and orbitale heights, well in front of the ear.
        t_v = v[_RULES["t"]["vertex"]]
        or_y = pi_y - 8.0  # orbitale lies about 8 mm below the lower lid on the neutral head
        sets["zygoma"] = skin[left & ~ear_all & (y > t_v[1] - 2) & (y < or_y - 2)
                              & (z > t_v[2] + 15) & (z < pupil[2] - 20) & (x > 40)]

        # Nasal ala: the model's nose patch; its border vertices run along the alar crease.
        nose = np.zeros(SKIN_STOP, dtype=bool)
        nose[_NOSE_BLOCK[0]:_NOSE_BLOCK[1]] = True
        st = self.skin_triangles
        m = nose[st]
        mixed = m.any(1) & ~m.all(1)
        crease = np.zeros(SKIN_STOP, dtype=bool)
        crease[st[mixed][m[mixed]]] = True
        alar = left & (x > 8) & (y < 5) & (y > -15)
        sets["ala"] = skin[nose & ~crease & alar]
        sets["nostril_rim"] = np.array(_NOSTRIL_RIM_LEFT, dtype=np.int64)
        sets["alar_crease"] = skin[crease & alar & (x > 12)]
        return sets

    # -- compile the rules into batches -----------------------------------------------------------
    def _compile(self):
        # Slots: the landmarks in LABELS order, then the helper points (both sides).
        slots = list(LABELS) + ["{}_{}".format(h, side) for h in _HELPER_RULES for side in "RL"]
        self.index = {lab: i for i, lab in enumerate(slots)}
        self.n_slots = len(slots)
        self.fixed = np.full(len(slots), -1, dtype=np.int64)
        rules = []  # (slot, kind, candidates, direction, extra)
        for lab in slots:
            base, side = (lab[:-2], lab[-1]) if lab.endswith(("_R", "_L")) else (lab, None)
            rule = _RULES[base] if base in _RULES else _HELPER_RULES[base]
            flip = np.array([-1.0, 1.0, 1.0]) if side == "R" else np.ones(3)
            vert = int(self.mirror[rule["vertex"]]) if side == "R" else rule["vertex"]
            slot = self.index[lab]
            if rule["kind"] == "vertex":
                self.fixed[slot] = vert
                continue
            cand = self._candidates(rule, vert, side)
            if vert not in set(cand.tolist()):
                raise AssertionError("template vertex of {} not among its candidates".format(lab))
            direction = None
            if "direction" in rule:
                direction = np.asarray(rule["direction"], dtype=np.float64) * flip
                direction /= np.linalg.norm(direction)
            extra = {}
            for key in ("chord", "level", "between"):
                if key in rule:
                    ends = rule[key]
                    extra[key] = [self._slot(e, side) for e in ends[:2]] + list(ends[2:])
            if "away" in rule:
                away = np.asarray(rule["away"], dtype=np.float64) * flip
                extra["away"] = away / np.linalg.norm(away)
            extra["axis"] = np.asarray(rule.get("axis", (0, 1, 0)), dtype=np.float64)
            extra["template"] = vert
            rules.append((slot, rule["kind"], cand, direction, extra))
        # Order: each rule after the slots it needs; one vectorised batch per kind and stage.
        done = set(np.flatnonzero(self.fixed >= 0).tolist())
        pending = list(rules)
        self.stages = []
        while pending:
            ready = [r for r in pending if all(n in done for n in self._needs(r))]
            if not ready:
                raise AssertionError("circular landmark rules")
            for kind in ("extreme", "deepest", "level", "fold"):
                group = [r for r in ready if r[1] == kind]
                if group:
                    self.stages.append(self._batch(kind, group))
            done |= {r[0] for r in ready}
            pending = [r for r in pending if all(r[0] != q[0] for q in ready)]

    def _slot(self, name: str, side: Optional[str]) -> int:
        if name in self.index:
            return self.index[name]
        return self.index["{}_{}".format(name, side)]

    @staticmethod
    def _needs(rule) -> List[int]:
        extra = rule[4]
        needs = []
        for key in ("chord", "level", "between"):
            if key in extra:
                needs += extra[key][:2]
        return needs

    def _candidates(self, rule: dict, vert: int, side: Optional[str]) -> np.ndarray:
        v = self.neutral
        cand = self.sets[rule["within"]]
        if side == "R" and rule["within"] != "midline":
            cand = np.unique(self.mirror[cand])
        if "radius" in rule:
            cand = cand[np.linalg.norm(v[cand] - v[vert], axis=1) <= rule["radius"]]
        return np.asarray(cand, dtype=np.int64)

    def _batch(self, kind: str, group) -> dict:
        k = max(len(r[2]) for r in group)
        cand = np.zeros((len(group), k), dtype=np.int64)
        valid = np.zeros((len(group), k), dtype=bool)
        for i, r in enumerate(group):
            cand[i, :len(r[2])] = r[2]
            valid[i, :len(r[2])] = True
        batch = dict(kind=kind, slots=np.array([r[0] for r in group]), cand=cand, valid=valid,
                     template=np.array([r[4]["template"] for r in group]))
        # Optional: only candidates projecting inside the segment between two found landmarks.
        between = [r[4].get("chord", r[4].get("between")) for r in group]
        batch["has_between"] = np.array([e is not None for e in between])
        batch["between"] = np.array([e[:2] if e is not None else [0, 0] for e in between])
        batch["direction"] = np.stack([np.zeros(3) if r[3] is None else r[3] for r in group])
        if kind == "deepest":
            batch["away"] = np.stack([r[4]["away"] for r in group])
        if kind == "fold":
            batch["position"] = [{int(vv): i for i, vv in enumerate(r[2])} for r in group]
        if kind == "level":
            # Without a direction: the candidate closest to the level; with one: the extreme
            # along it among the candidates within 2.5 mm of the level.
            batch["closest"] = np.array([r[3] is None for r in group])
            batch["axis"] = np.stack([r[4]["axis"] for r in group])
            batch["ends"] = np.array([r[4]["level"][:2] for r in group])
            batch["fraction"] = np.array([r[4]["level"][2] for r in group], dtype=np.float64)
        return batch

    # -- per head ----------------------------------------------------------------------------------
    def vertices_for(self, vertices: np.ndarray) -> np.ndarray:
        """Vertex index of every slot (landmarks then helpers) on one head."""
        out = self.fixed.copy()
        for b in self.stages:
            if b["kind"] == "fold":
                for j, slot in enumerate(b["slots"]):
                    out[slot] = _fold_vertex(vertices, b["cand"][j][b["valid"][j]],
                                             b["position"][j], out[b["between"][j]],
                                             b["template"][j])
                continue
            p = vertices[b["cand"]]  # (L, K, 3)
            ok = b["valid"].copy()
            if b["has_between"].any():
                a = vertices[out[b["between"][:, 0]]]
                e = vertices[out[b["between"][:, 1]]]
                seg = e - a
                length = np.linalg.norm(seg, axis=1, keepdims=True)
                u = seg / np.maximum(length, 1e-9)
                rel = p - a[:, None, :]
                t = np.einsum("lkd,ld->lk", rel, u) / np.maximum(length, 1e-9)
                ok &= ~b["has_between"][:, None] | ((t > 0.0) & (t < 1.0))
            if b["kind"] == "extreme":
                score = np.einsum("lkd,ld->lk", p, b["direction"])
            elif b["kind"] == "deepest":
                # Distance from the chord, on the side of ``away`` (made perpendicular to it).
                away = b["away"] - np.sum(b["away"] * u, axis=1, keepdims=True) * u
                away /= np.maximum(np.linalg.norm(away, axis=1, keepdims=True), 1e-9)
                score = np.einsum("lkd,ld->lk", rel, away)
            else:  # level
                a = vertices[out[b["ends"][:, 0]]]
                e = vertices[out[b["ends"][:, 1]]]
                height = np.einsum("ld,ld->l", a + b["fraction"][:, None] * (e - a), b["axis"])
                off = np.abs(np.einsum("lkd,ld->lk", p, b["axis"]) - height[:, None])
                band = np.maximum(2.5, off.min(axis=1, where=ok, initial=np.inf))
                along = np.einsum("lkd,ld->lk", p, b["direction"])
                score = np.where(b["closest"][:, None], -off, along)
                ok &= b["closest"][:, None] | (off <= band[:, None])
            score = np.where(ok, score, -np.inf)
            best = np.argmax(score, axis=1)
            chosen = b["cand"][np.arange(len(best)), best]
            # A rule with no admissible candidate (a degenerate head) keeps its template vertex.
            out[b["slots"]] = np.where(ok.any(axis=1), chosen, b["template"])
        return out


def _fold_vertex(vertices: np.ndarray, chain: np.ndarray, position: Dict[int, int],
                 ends: np.ndarray, template: int) -> int:
    """Deepest point of a concave fold of a profile chain, between two of its vertices.

    The chain (ordered midline vertices) is looked at in the sagittal plane. Every line
    through two chain points that has the whole stretch behind it (posterior) is a
    tangent bridging a fold; the point deepest behind such a line is the fold's bottom.
    A stretch without a fold deeper than 0.3 mm gives the template vertex, or the
    middle of the stretch if the template is outside it.
    """
    a, b = sorted((position.get(int(ends[0]), -1), position.get(int(ends[1]), -1)))
    if a < 0 or b - a < 2:
        return int(template)
    stretch = chain[a:b + 1]
    q = vertices[stretch][:, 1:]  # (y, z)
    d = q[None, :, :] - q[:, None, :]  # d[i, j] = q_j - q_i
    normal = np.stack([d[..., 1], -d[..., 0]], axis=-1)  # points anterior for a downward pair
    normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-9)
    signed = np.einsum("ijc,ikc->ijk", normal, q[None, :, :] - q[:, None, :])  # [i, j, k]
    n = len(stretch)
    i, j = np.triu_indices(n, 2)
    support = signed[i, j].max(axis=1) <= 1e-6
    k = np.arange(n)
    inside = (k[None, :] > i[:, None]) & (k[None, :] < j[:, None]) & support[:, None]
    depth = np.where(inside, -signed[i, j], -np.inf)
    best = np.unravel_index(np.argmax(depth), depth.shape)
    if depth[best] > 0.3:
        return int(stretch[best[1]])
    if template in set(stretch.tolist()):
        return int(template)
    return int(stretch[n // 2])


@functools.lru_cache(maxsize=4)
def _template_for(path: str) -> _Template:
    neutral, triangles, ibug68 = _load_ict(path)
    return _Template(neutral, triangles, ibug68)


def _template(path=None) -> _Template:
    if path is None:
        path = default_ict_path()
    return _template_for(str(path))


def mouth_rings(depth: int, ict_path=None) -> np.ndarray:
    """For each vertex of the head: how many edges it lies from the skin's mouth opening (the
    inner end of the lips' inner surfaces), counted up to ``depth``; ``depth + 1`` beyond
    (read-only; computed once per model file and depth)."""
    return _mouth_rings(str(ict_path or default_ict_path()), int(depth))


@functools.lru_cache(maxsize=4)
def _mouth_rings(path: str, depth: int) -> np.ndarray:
    tpl = _template(path)
    adj = tpl._adjacency()
    opening = tpl._mouth_opening(tpl._boundary_vertices())
    rings = np.full(tpl.n_vertices, depth + 1, dtype=np.int64)
    for k in range(depth, -1, -1):
        rings[:SKIN_STOP][tpl._rings(adj, opening, k)] = k
    rings.flags.writeable = False
    return rings


def _label_slots(tpl: _Template, labels: Optional[Sequence[str]]) -> np.ndarray:
    if labels is None:
        return np.arange(len(LABELS))
    unknown = [lab for lab in labels if lab not in _LABEL_SET]
    if unknown:
        raise PalnetError("unknown ICT landmark label(s): {}".format(", ".join(unknown)))
    return np.array([tpl.index[lab] for lab in labels], dtype=np.int64)


def _check(vertices: np.ndarray, tpl: _Template) -> np.ndarray:
    v = np.asarray(vertices, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] < SKIN_STOP:
        raise PalnetError("expected ICT head vertices of shape ({}, 3), got {}".format(
            tpl.n_vertices, v.shape))
    return v


def ict_landmark_vertices(vertices: np.ndarray, labels: Optional[Sequence[str]] = None,
                          ict_path=None) -> np.ndarray:
    """(L,) vertex index of each landmark on this ICT head (``labels`` default: all of LABELS)."""
    tpl = _template(ict_path)
    v = _check(vertices, tpl)
    return tpl.vertices_for(v)[_label_slots(tpl, labels)]


def ict_landmark_positions(vertices: np.ndarray, labels: Optional[Sequence[str]] = None,
                           ict_path=None) -> np.ndarray:
    """(L, 3) landmark positions on an ICT head given as its (26719, 3) vertices (mm, ICT frame)."""
    tpl = _template(ict_path)
    v = _check(vertices, tpl)
    return v[tpl.vertices_for(v)[_label_slots(tpl, labels)]].copy()


def ict_landmark_locations(vertices: np.ndarray, labels: Optional[Sequence[str]] = None,
                           ict_path=None) -> Tuple[np.ndarray, np.ndarray]:
    """Landmarks as surface locations: (triangle index (L,), barycentric weights (L, 3)).

    Triangle indices refer to the model's ``triangles`` array (all skin triangles);
    ``(vertices[triangles[tri]] * bary[:, :, None]).sum(1)`` gives the positions.
    """
    tpl = _template(ict_path)
    v = _check(vertices, tpl)
    vid = tpl.vertices_for(v)[_label_slots(tpl, labels)]
    tri = tpl.vertex_triangle[vid]
    bary = np.zeros((len(vid), 3))
    bary[np.arange(len(vid)), tpl.vertex_corner[vid]] = 1.0
    return tri, bary


def anatomical_order_violations(points: np.ndarray) -> List[str]:
    """Relations between the 50 landmarks (LABELS order, ICT frame) that a plausible face keeps.

    Returns the broken ones as short texts (empty for a plausible head). Extreme
    identity weights (about 1 % of heads at s = 1.6) give faces with, e.g., the
    upper lip tucked behind the lower one; a data generator may skip such heads.
    """
    p = dict(zip(LABELS, np.asarray(points, dtype=np.float64).reshape(-1, 3)))
    bad = []
    top_down = ("tr", "g", "n", "prn", "sn", "ls", "sto", "li", "sl", "pg", "me")
    for a, b in zip(top_down[:-1], top_down[1:]):
        if not p[a][1] > p[b][1]:
            bad.append("{} not above {}".format(a, b))
    if not p["sn"][2] < p["c"][2] <= p["prn"][2]:
        bad.append("c not between sn and prn in depth")
    if not all(p["prn"][2] >= p[k][2] for k in ("tr", "g", "n", "c", "sn")):
        bad.append("prn not in front of the upper face and columella")
    for side, sign in (("R", -1.0), ("L", 1.0)):
        q = {name: p[name + "_" + side] for name in BILATERAL_NAMES}
        wide = {k: abs(v[0]) for k, v in q.items()}
        bad += ["{}_{} on the wrong side".format(k, side) for k in BILATERAL_NAMES
                if not sign * q[k][0] > 0]
        checks = (
            ("ex wider than en", wide["ex"] > wide["en"]),
            ("zy wider than ex", wide["zy"] > wide["ex"]),
            ("ps, pi between en and ex", wide["en"] < min(wide["ps"], wide["pi"])
             and max(wide["ps"], wide["pi"]) < wide["ex"]),
            ("ft above os above ps", q["ft"][1] > q["os"][1] > q["ps"][1]),
            ("ps not below pi", q["ps"][1] >= q["pi"][1]),
            ("or below pi", q["or"][1] < q["pi"][1]),
            ("ch wider than cph", wide["ch"] > wide["cph"]),
            ("sa above t above sba", q["sa"][1] > q["t"][1] > q["sba"][1]),
            ("pa behind t behind zy", q["pa"][2] < q["t"][2] < q["zy"][2]),
            ("go between me and t in height", p["me"][1] < q["go"][1] < q["t"][1]),
        )
        bad += ["{} ({})".format(text, side) for text, ok in checks if not ok]
    return bad


# -- documentation pictures ---------------------------------------------------------------------
_DOC_HEADS = (
    ("ICT-FaceKit neutral head", 0, 0.0, {}),
    ("random identity (s = 1.0), smiling", 7, 1.0, {"mouthSmile_L": 0.45, "mouthSmile_R": 0.45}),
    ("random identity (s = 1.4), jaw a little open", 11, 1.4, {"jawOpen": 0.2}),
)
_DOC_CLOSEUPS = (
    ("eye", ("os_R", "ps_R", "pi_R", "en_R", "ex_R", "or_R", "ft_R", "g", "n"), "front"),
    ("nose", ("prn", "c", "sn", "al_R", "al_L", "ac_R", "ac_L", "sbal_R", "sbal_L"), "below"),
    ("mouth", ("sn", "ls", "sto", "li", "sl", "cph_R", "cph_L", "ch_R", "ch_L"), "front"),
    ("ear", ("t_R", "sa_R", "sba_R", "pa_R", "obs_R", "zy_R"), "side"),
)


def render_documentation(out_dir, ict_path=None, size: int = 600) -> List[str]:
    """Write protocol_landmarks.png and protocol_closeups.png (ICT heads, all 50 labelled)."""
    import os
    import tempfile

    from .render import RenderOptions, render_landmarks, stack_pngs

    tpl = _template(ict_path)
    path = str(ict_path) if ict_path is not None else None
    if path is None:
        path = str(default_ict_path())
    with np.load(path) as data:
        modes = data["identity_modes_mm"].astype(np.float64)
        expressions = data["expression_modes_mm"].astype(np.float64)
        names = [str(n) for n in data["expression_names"]]
    scanned = tpl.triangles[scanned_triangle_mask(tpl.triangles)]
    colours = np.tile(np.array([0.91, 0.74, 0.64]), (tpl.n_vertices, 1))
    for a, b in EYEBALL_RANGES:
        colours[a:b] = (0.96, 0.96, 0.94)

    def head(seed, scale, expression):
        rng = np.random.default_rng(seed)
        v = tpl.neutral + (np.tensordot(rng.standard_normal(len(modes)) * scale, modes, 1)
                           if scale > 0 else 0.0)
        for name, weight in expression.items():
            v = v + weight * expressions[names.index(name)]
        return v

    os.makedirs(str(out_dir), exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for k, (title, seed, scale, expression) in enumerate(_DOC_HEADS):
            v = head(seed, scale, expression)
            marks = Landmarks(LABELS, ict_landmark_positions(v, ict_path=ict_path))
            rows.append(render_landmarks(Mesh(v, scanned), marks, os.path.join(tmp, "h%d.png" % k),
                                         RenderOptions(views=("front", "side"), size=(size, size),
                                                       margin=0.1, title=title, font_size=13,
                                                       vertex_colors=colours)))
        written.append(stack_pngs(rows, os.path.join(str(out_dir), "protocol_landmarks.png"),
                                  levels=56))
        v = tpl.neutral
        points = dict(zip(LABELS, ict_landmark_positions(v, ict_path=ict_path)))
        tiles = []
        for name, labels, view in _DOC_CLOSEUPS:
            marks = Landmarks(list(labels), np.array([points[lab] for lab in labels]))
            tiles.append(render_landmarks(Mesh(v, scanned), marks, os.path.join(tmp, name + ".png"),
                                          RenderOptions(views=(view,), size=(size, size), margin=0.3,
                                                        title=name, font_size=15, point_radius=0.7,
                                                        vertex_colors=colours, view_titles=False)))
        written.append(stack_pngs(tiles, os.path.join(str(out_dir), "protocol_closeups.png"),
                                  columns=2, levels=56))
    return written


if __name__ == "__main__":  # python -m palnet.ict_landmarks Resources/docs
    import sys

    for p in render_documentation(sys.argv[1] if len(sys.argv) > 1 else "."):
        print(p)
