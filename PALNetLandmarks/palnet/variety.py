"""Faces beyond one shape space: smooth local warps, clinical expressions and scanner habits.

ICT-FaceKit's identity modes make a limited family of faces: mouths, noses and proportions
within about 1.6 sigma of its 100 scanned sitters. Real faces leave that family (a mouth 18 %
wider, a nose longer and more projecting, a face wider than any mode mix gives). Here a head
is bent by smooth, fold-free warps centred on its features before it is scanned; the landmarks
are found again on the bent head by their anatomical definitions, so the truth stays exact.

Warp families (:data:`FAMILIES`), each a sum of Gaussian-weighted local scalings and shifts:

- ``mouth``: width, lip height and thickness, projection, around stomion;
- ``nose``: length, width, tip projection, around the nose;
- ``eyes``: eye spacing and fissure width and height, around each eye;
- ``chin``: chin projection, height and width;
- ``forehead``: forehead slope and height;
- ``ears``: ear size and place;
- ``proportions``: the whole head's width, height and depth, and the lower face's height.

``eyes`` is the held-out family (:data:`HELD_OUT_FAMILY`): the shipped model never saw it, so
scans bent only by it measure how the model does on faces unlike its training ones.

Clinical expressions (:data:`CLINICAL_EXPRESSIONS`) are the ones a sitter shows during a scan,
stronger than the generator's mild ones: lips apart, a slight smile, lips pressed, eyes
narrowed or closed, brows raised. Scanner habits (:func:`scanner_settings`): face-only
captures, coarse meshes (median edge 3-5 mm) and hair over the scalp above the hairline.
"""
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from .datatypes import Mesh
from .errors import PalnetError
from .mesh_io import mesh_to_polydata, polydata_to_mesh

FAMILIES = ("mouth", "nose", "eyes", "chin", "forehead", "ears", "proportions")
HELD_OUT_FAMILY = "eyes"
TRAINING_FAMILIES = tuple(f for f in FAMILIES if f != HELD_OUT_FAMILY)

# (expression shapes moved together, weight range); a scan draws one of these or none.
CLINICAL_EXPRESSIONS = {
    "lips apart": (("jawOpen",), (0.1, 0.45)),
    "slight smile": (("mouthSmile_L", "mouthSmile_R"), (0.25, 0.7)),
    "lips pressed": (("mouthPress_L", "mouthPress_R"), (0.4, 1.0)),
    "eyes narrowed": (("eyeSquint_L", "eyeSquint_R"), (0.4, 1.0)),
    "eyes closed": (("eyeBlink_L", "eyeBlink_R"), (0.7, 1.0)),
    "brows raised": (("browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R"), (0.4, 1.0)),
}
CLOSED_EYES_BLINK = 0.6  # above this blink weight the eyeballs are hidden by the lids: not scanned


def _side(labels: Sequence[str], lm: np.ndarray, name: str) -> Tuple[np.ndarray, np.ndarray]:
    index = {lab: i for i, lab in enumerate(labels)}
    return lm[index[name + "_R"]], lm[index[name + "_L"]]


def _point(labels: Sequence[str], lm: np.ndarray, name: str) -> np.ndarray:
    return lm[list(labels).index(name)]


class _Warp:
    """A displacement field: a sum of Gaussian-weighted local affine moves ``w(x) (A (x - c) + b)``."""

    def __init__(self):
        self.terms = []

    def scale(self, centre, factors, radius, shift=(0.0, 0.0, 0.0)):
        """Around ``centre``: scale by ``factors`` (x, y, z) and shift by ``shift`` within ``radius`` (mm,
        a number or one per axis)."""
        self.terms.append((np.asarray(centre, float), np.diag(np.asarray(factors, float) - 1.0),
                           np.asarray(shift, float), np.broadcast_to(np.asarray(radius, float), (3,))))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = np.array(x, dtype=np.float64, copy=True)
        for centre, a, b, radius in self.terms:
            d = x - centre
            w = np.exp(-0.5 * ((d / radius) ** 2).sum(axis=1))[:, None]
            out += w * (d @ a.T + b)
        return out


def family_warp(family: str, labels: Sequence[str], lm: np.ndarray, rng: np.random.Generator,
                strength: float = 1.0) -> _Warp:
    """One random warp of ``family`` for a head whose landmarks (ICT frame: x to the subject's
    left, y up, z out of the face, mm) are ``lm``. ``strength`` scales every amplitude."""
    u = lambda lo, hi: 1.0 + strength * rng.uniform(lo, hi)  # noqa: E731 - a factor around 1
    s = lambda lo, hi: strength * rng.uniform(lo, hi)  # noqa: E731 - a shift in mm
    warp = _Warp()
    if family == "mouth":
        sto = _point(labels, lm, "sto")
        half_width = 0.5 * np.linalg.norm(np.subtract(*_side(labels, lm, "ch")))
        warp.scale(sto, (u(-0.25, 0.45), u(-0.25, 0.35), u(-0.1, 0.2)), (half_width * 1.6, 14.0, 24.0))
    elif family == "nose":
        n, sn, prn = (_point(labels, lm, k) for k in ("n", "sn", "prn"))
        mid = 0.5 * (n + sn)
        warp.scale(mid, (u(-0.25, 0.4), u(-0.15, 0.3), 1.0), (18.0, 0.7 * np.linalg.norm(n - sn), 22.0))
        warp.scale(prn, (1.0, 1.0, 1.0), 12.0, shift=(0.0, s(-3.0, 3.0), s(-4.0, 7.0)))
    elif family == "eyes":
        spacing = s(-5.0, 6.0)
        fissure = (u(-0.15, 0.22), u(-0.3, 0.35), 1.0)
        for side, sign in (("R", -1.0), ("L", 1.0)):
            en, ex = (_point(labels, lm, k + "_" + side) for k in ("en", "ex"))
            centre = 0.5 * (en + ex)
            warp.scale(centre, fissure, (14.0, 10.0, 12.0), shift=(sign * spacing, 0.0, 0.0))
    elif family == "chin":
        pg = _point(labels, lm, "pg")
        warp.scale(pg, (u(-0.2, 0.25), u(-0.2, 0.25), 1.0), (24.0, 18.0, 22.0),
                   shift=(0.0, s(-7.0, 7.0), s(-7.0, 8.0)))
    elif family == "forehead":
        g, tr = _point(labels, lm, "g"), _point(labels, lm, "tr")
        warp.scale(0.5 * (g + tr), (1.0, u(-0.15, 0.2), 1.0), (45.0, 28.0, 30.0), shift=(0.0, 0.0, s(-5.0, 5.0)))
    elif family == "ears":
        for side in ("R", "L"):
            ear = np.mean([_point(labels, lm, k + "_" + side) for k in ("sa", "sba", "pa", "obs")], axis=0)
            f = u(-0.15, 0.25)
            warp.scale(ear, (1.0, f, f), (14.0, 26.0, 20.0), shift=(0.0, s(-5.0, 5.0), s(-5.0, 5.0)))
    elif family == "proportions":
        centre = lm.mean(axis=0)
        warp.scale(centre, (u(-0.12, 0.15), u(-0.12, 0.15), u(-0.12, 0.15)), 1e6)  # global: the weight is 1
        sn, me = _point(labels, lm, "sn"), _point(labels, lm, "me")
        warp.scale(me, (1.0, 1.0, 1.0), (60.0, 0.8 * np.linalg.norm(sn - me), 60.0), shift=(0.0, s(-6.0, 6.0), 0.0))
    else:
        raise ValueError("unknown warp family {!r} (use {})".format(family, ", ".join(FAMILIES)))
    return warp


def warp_head(vertices: np.ndarray, labels: Sequence[str], lm: np.ndarray, families: Sequence[str],
              rng: np.random.Generator, chance: float = 0.6, strength: float = 1.0) -> Tuple[np.ndarray, list]:
    """The head's vertices bent by a random warp of each of ``families`` (each with ``chance``;
    at least one): (vertices, the families used)."""
    used = [f for f in families if rng.random() < chance]
    if families and not used:
        used = [families[int(rng.integers(len(families)))]]
    v = np.asarray(vertices, dtype=np.float64)
    for family in used:
        v = family_warp(family, labels, lm, rng, strength)(v)
    return v, used


def draw_expression(names: Sequence[str], rng: np.random.Generator, chance: float = 0.5) -> Dict[str, float]:
    """A clinical expression (shape name -> weight) or none."""
    if rng.random() >= chance:
        return {}
    kind = list(CLINICAL_EXPRESSIONS)[int(rng.integers(len(CLINICAL_EXPRESSIONS)))]
    shapes, (lo, hi) = CLINICAL_EXPRESSIONS[kind]
    weight = rng.uniform(lo, hi)
    return {shape: float(weight) for shape in shapes if shape in names}


def scanner_settings(rng: np.random.Generator) -> dict:
    """What the scanner does to this scan: crop ("random" or "face"), a coarse mesh's median
    edge in mm (or None) and hair over the scalp (or None: mm of hair thickness)."""
    return {"crop": "face" if rng.random() < 0.3 else "random",
            "coarse_edge_mm": float(rng.uniform(3.0, 5.0)) if rng.random() < 0.25 else None,
            "hair_mm": float(rng.uniform(4.0, 15.0)) if rng.random() < 0.25 else None}


def add_hair(v: np.ndarray, normals: np.ndarray, labels: Sequence[str], lm: np.ndarray, thickness: float,
             rng: np.random.Generator) -> np.ndarray:
    """The scalp above the hairline (trichion) pushed out along its normals by a bumpy layer of
    hair about ``thickness`` mm thick, fading in over the first 10 mm so the skin below is kept."""
    tr = _point(labels, lm, "tr")
    ear_top = max(_point(labels, lm, "sa_" + side)[1] for side in ("R", "L"))
    top = np.clip((v[:, 1] - tr[1] - 2.0) / 10.0, 0.0, 1.0)  # the scalp above the hairline
    # the sides and back of the head above the ears, behind the forehead
    sides = np.clip((v[:, 1] - ear_top - 8.0) / 10.0, 0.0, 1.0) * np.clip((tr[2] - 25.0 - v[:, 2]) / 10.0, 0.0, 1.0)
    fade = np.maximum(top, sides)
    bumps = 1.0 + 0.3 * np.sin(v[:, 0] / rng.uniform(6.0, 14.0) + rng.uniform(0, 6.3)) \
        * np.cos(v[:, 2] / rng.uniform(6.0, 14.0) + rng.uniform(0, 6.3))
    return v + normals * (thickness * fade * bumps)[:, None]


def coarse_target(vertices: np.ndarray, triangles: np.ndarray, edge_mm: float) -> int:
    """Vertex count that gives a mesh of this area a median edge of about ``edge_mm``."""
    a = vertices[triangles[:, 1]] - vertices[triangles[:, 0]]
    b = vertices[triangles[:, 2]] - vertices[triangles[:, 0]]
    area = 0.5 * np.linalg.norm(np.cross(a, b), axis=1).sum()
    per_triangle = np.sqrt(3.0) / 4.0 * edge_mm ** 2
    return max(500, int(area / per_triangle / 2.0))


def decimate(vertices: np.ndarray, triangles: np.ndarray, target: int) -> Tuple[np.ndarray, np.ndarray]:
    """The surface with about ``target`` vertices (VTK's topology-preserving decimation)."""
    from vtkmodules.vtkFiltersCore import vtkDecimatePro
    reduction = 1.0 - target / max(len(vertices), 1)
    if reduction <= 0.01:
        return vertices, triangles
    f = vtkDecimatePro()
    f.SetInputData(mesh_to_polydata(Mesh(vertices, triangles, "mm")))
    f.SetTargetReduction(float(reduction))
    f.PreserveTopologyOn()
    f.Update()
    out = polydata_to_mesh(f.GetOutput(), "mm")
    return np.asarray(out.vertices, np.float64), np.asarray(out.triangles, np.int64)


CLOSED_LIPS_RINGS = 7  # the lips' inner surfaces a scanner does not see: rings of vertices around the mouth opening
CLOSED_LIPS_MAX_GAP_MM = 4.0  # lips further apart at the midline than this are open: a scanner sees the gap


def close_lips(vertices: np.ndarray, triangles: np.ndarray, rings: np.ndarray, neutral: np.ndarray,
               depth: int = CLOSED_LIPS_RINGS) -> Optional[np.ndarray]:
    """The triangles of a head whose lips a surface scanner sees closed: the lips' inner surfaces
    (vertices fewer than ``depth`` edges from the mouth opening, ``rings``) are not captured, and
    the slit left between the lips is bridged by a strip of triangles, a shallow crease where the
    lips meet (real scans show one; the head model's lips fold several mm deep into the mouth).
    ``neutral``: the neutral head's vertices, which order the slit's rim. None when the lips lie
    more than CLOSED_LIPS_MAX_GAP_MM apart at the midline (an open mouth) or the rim is not one loop."""
    t = np.asarray(triangles)
    kept = t[(rings[t] >= depth).all(axis=1)]
    # the rim of the slit: edges of one kept triangle whose ends both lie ``depth`` rings out
    e = np.concatenate([kept[:, [0, 1]], kept[:, [1, 2]], kept[:, [2, 0]]])
    key = np.sort(e, axis=1)
    _, inverse, count = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    rim = e[(count[inverse.ravel()] == 1) & (rings[e] == depth).all(axis=1)]
    if len(rim) < 4:
        return None
    following = dict(zip(rim[:, 0].tolist(), rim[:, 1].tolist()))
    if len(following) != len(rim):
        return None
    loop = [int(rim[0, 0])]
    while len(loop) <= len(rim):
        nxt = following.get(loop[-1])
        if nxt is None:
            return None
        if nxt == loop[0]:
            break
        loop.append(nxt)
    if len(loop) != len(rim):
        return None
    loop = np.asarray(loop)
    x = neutral[loop, 0]
    i0, i1 = int(np.argmin(x)), int(np.argmax(x))
    turned = np.roll(loop, -i0)
    j = (i1 - i0) % len(loop)
    upper, lower = turned[:j + 1], np.r_[turned[j:], turned[0]][::-1]  # both from corner to corner
    if neutral[upper, 1].mean() < neutral[lower, 1].mean():
        upper, lower = lower, upper
    mid_u, mid_l = upper[np.argmin(np.abs(neutral[upper, 0]))], lower[np.argmin(np.abs(neutral[lower, 0]))]
    if np.linalg.norm(vertices[mid_u] - vertices[mid_l]) > CLOSED_LIPS_MAX_GAP_MM:
        return None
    strip, a, b = [], 0, 0
    while a < len(upper) - 1 or b < len(lower) - 1:
        if b == len(lower) - 1 or (a < len(upper) - 1 and neutral[upper[a + 1], 0] <= neutral[lower[b + 1], 0]):
            strip.append((upper[a], lower[b], upper[a + 1]))
            a += 1
        else:
            strip.append((upper[a], lower[b], lower[b + 1]))
            b += 1
    strip = np.asarray(strip, dtype=t.dtype)
    p = neutral[strip]
    backwards = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])[:, 2] < 0  # face out of the face (+z)
    strip[backwards] = strip[backwards][:, [0, 2, 1]]
    return np.concatenate([kept, strip])


def check_families(families: Optional[Sequence[str]]) -> Tuple[str, ...]:
    families = tuple(families or ())
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise PalnetError("unknown warp famil{} {} (use {})".format(
            "ies" if len(unknown) > 1 else "y", ", ".join(unknown), ", ".join(FAMILIES)))
    return families
