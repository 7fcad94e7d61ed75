"""Synthetic stereo-photogrammetry-like face scans with exact landmark ground truth.

Heads come from the ICT-FaceKit morphable model (MIT licence): random identity,
mild expression, only the skin a scanner sees, random crops and holes, a new
irregular triangulation, surface noise, random pose and units. Each scan is a
pure function of its seed, so a data set is reproducible from ``--seed`` and
``--n`` alone. Seeds below 1000 are for training, 1000 and above for tests.
"""
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from .auricle import EAR_NAMES  # the landmarks a capture cut in front of the ears lacks
from .errors import PalnetError
from .geometry import drop_unused, grid_subsample, vertex_normals
from .ict_landmarks import LABELS, anatomical_order_violations, ict_landmark_positions, mouth_rings
from .mesh_io import write_landmarks, write_mesh
from .options import SYNTH_CROPS
from .resources import default_ict_path
from .snap import closest_points_on_surface
from .variety import (CLOSED_EYES_BLINK, CLOSED_LIPS_RINGS, add_hair, check_families, close_lips, coarse_target,
                      decimate, draw_expression, scanner_settings, warp_head)
from .datatypes import Landmarks, Mesh, unit_scale

GENERATOR_VERSION = 1
NARROW_FACE_END = 6706  # ICT vertex range [0, 6706): the face without ears and neck
HELD_OUT_SEED = 1000  # seeds >= this are never used for training

# ICT frame: x to the subject's left, y up, z out of the face. Scans in the
# "realistic" pose start upright in LPS (x left, y posterior, z superior), the
# frame 3D Slicer gives a headerless mesh file, so they open facing the viewer.
ICT_TO_LPS = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])

# Mild expressions a sitter may show during a scan (eye-gaze shapes only move
# the eyeballs and are left out).
MILD_EXPRESSIONS = ("jawOpen", "mouthSmile_L", "mouthSmile_R", "mouthFrown_L", "mouthFrown_R",
                    "browInnerUp_L", "browInnerUp_R", "browDown_L", "browDown_R", "eyeSquint_L",
                    "eyeSquint_R", "eyeBlink_L", "eyeBlink_R", "mouthPucker", "mouthPress_L",
                    "mouthPress_R", "cheekSquint_L", "cheekSquint_R", "noseSneer_L", "noseSneer_R",
                    "mouthDimple_L", "mouthDimple_R")  # not mouthClose: alone it pushes the lips into each other


@dataclass
class IctModel:
    neutral: np.ndarray          # (V, 3) mm
    identity: np.ndarray         # (100, V, 3)
    expression: np.ndarray       # (53, V, 3)
    expression_names: List[str]
    triangles: np.ndarray        # (T, 3) skin + eyeball-front triangles only
    skin_vertices: np.ndarray    # indices of the scanned skin
    eyeball_vertices: np.ndarray


_ICT_CACHE: Dict[str, IctModel] = {}


def load_ict(path: Optional[os.PathLike] = None) -> IctModel:
    """The ICT-FaceKit model restricted to what a surface scanner sees (cached per path)."""
    path = Path(path) if path else default_ict_path()
    key = str(path)
    if key in _ICT_CACHE:
        return _ICT_CACHE[key]
    if not path.is_file():
        raise PalnetError("ICT-FaceKit model file not found (pass --ict PATH or set PALNET_ICT)", path)
    try:
        d = np.load(path, allow_pickle=False)
        names = [str(x) for x in d["region_names"]]
        ranges = {n: tuple(int(v) for v in r) for n, r in zip(names, d["region_ranges"])}
        neutral = d["neutral_mm"].astype(np.float64)
        identity = d["identity_modes_mm"].astype(np.float32)
        expression = d["expression_modes_mm"].astype(np.float32)
        triangles = d["triangles"].astype(np.int64)
        expression_names = [str(x) for x in d["expression_names"]]
    except (KeyError, ValueError, OSError) as exc:
        raise PalnetError("not a usable ICT-FaceKit model file ({})".format(exc), path)
    skin = np.arange(ranges["face"][0], ranges["head_and_neck"][1])
    eyeballs = np.concatenate([np.arange(*ranges["eyeball_left"]), np.arange(*ranges["eyeball_right"])])
    # Only the front cap of each eyeball shows between the lids.
    front = np.zeros(len(neutral), bool)
    for name in ("eyeball_left", "eyeball_right"):
        idx = np.arange(*ranges[name])
        centre = neutral[idx].mean(axis=0)
        radial = neutral[idx] - centre
        cos_fwd = radial[:, 2] / np.linalg.norm(radial, axis=1)
        front[idx[cos_fwd > 0.55]] = True
    seen = np.zeros(len(neutral), bool)
    seen[skin] = True
    seen |= front
    tri = triangles[seen[triangles].all(axis=1)]
    model = IctModel(neutral, identity, expression, expression_names, tri, skin, np.flatnonzero(front))
    _ICT_CACHE[key] = model
    return model


def smooth_noise(t: np.ndarray, n: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Per-vertex noise of standard deviation ``sigma``, averaged once over each vertex's
    neighbours: scanners' noise is correlated over a few samples, not independent."""
    x = rng.normal(0.0, 1.0, n)
    i, j = np.concatenate([t[:, 0], t[:, 1], t[:, 2]]), np.concatenate([t[:, 1], t[:, 2], t[:, 0]])
    total = x + np.bincount(i, x[j], minlength=n) + np.bincount(j, x[i], minlength=n)
    count = 1.0 + np.bincount(i, minlength=n) + np.bincount(j, minlength=n)
    y = total / count
    return y * (sigma / max(float(y.std()), 1e-12))


def subdivide(v: np.ndarray, t: np.ndarray):
    """Split every triangle into four at its edge midpoints."""
    n = len(v)
    e = np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]])
    e.sort(axis=1)
    keys = e[:, 0] * n + e[:, 1]
    uniq, inv = np.unique(keys, return_inverse=True)
    mid = (v[uniq // n] + v[uniq % n]) * 0.5
    m = len(t)
    a, b, c = (inv[:m] + n, inv[m:2 * m] + n, inv[2 * m:] + n)
    nt = np.concatenate([np.stack([t[:, 0], a, c], 1), np.stack([a, t[:, 1], b], 1),
                         np.stack([c, b, t[:, 2]], 1), np.stack([a, b, c], 1)])
    return np.vstack([v, mid]), nt


def _bisect_long_edges(v: np.ndarray, t: np.ndarray, wanted: int, rng: np.random.Generator):
    """Split up to ``wanted`` edges, each the longest edge of an area-weighted random triangle.

    No triangle is touched by two splits in one call, so every split turns its
    one or two triangles into two each, without T-junctions.
    """
    n = len(v)
    e = np.stack([t[:, [1, 2]], t[:, [2, 0]], t[:, [0, 1]]], axis=1)  # edge k is opposite corner k
    length = np.linalg.norm(v[e[..., 0]] - v[e[..., 1]], axis=2)
    longest = np.argmax(length, axis=1)
    es = np.sort(e, axis=2)
    _, edge_id = np.unique((es[..., 0] * n + es[..., 1]).ravel(), return_inverse=True)
    edge_id = edge_id.reshape(-1, 3)
    area = length.max(axis=1) ** 2  # proportional enough to area for the choice, and cheap
    keys = np.log(np.maximum(area, 1e-12)) - np.log(-np.log(rng.random(len(t))))  # Gumbel top-k
    m = min(wanted, len(t) // 3)
    pick = np.argpartition(-keys, m - 1)[:m]
    cand = edge_id[pick, longest[pick]]
    prio = np.full(edge_id.max() + 1, -1.0)
    prio[cand] = rng.random(len(cand))
    tri_best = prio[edge_id].max(axis=1)  # the strongest candidate edge touching each triangle
    ok_tri = np.ones(len(prio), bool)
    touched = prio[edge_id] >= 0
    # An edge is accepted when it is the strongest candidate on every triangle it borders.
    lose = touched & (prio[edge_id] < tri_best[:, None])
    ok_tri[edge_id[lose]] = False
    accepted = np.flatnonzero((prio >= 0) & ok_tri)
    new_index = np.full(len(prio), -1)
    new_index[accepted] = n + np.arange(len(accepted))
    split_at = new_index[edge_id]  # (T, 3): new vertex on edge k, or -1
    k = np.argmax(split_at >= 0, axis=1)
    hit = (split_at >= 0).any(axis=1)
    rows = np.flatnonzero(hit)
    kk = k[rows]
    c0 = t[rows, kk]
    c1 = t[rows, (kk + 1) % 3]
    c2 = t[rows, (kk + 2) % 3]
    mid = split_at[rows, kk]
    # Each accepted edge gets one random point; both its triangles use the same one.
    a_end = np.zeros((len(accepted), 2), np.int64)
    first_row = np.unique(mid, return_index=True)[1]
    a_end[mid[first_row] - n] = np.stack([c1[first_row], c2[first_row]], axis=1)
    frac = rng.uniform(0.35, 0.65, size=(len(accepted), 1))
    new_pts = v[a_end[:, 0]] + frac * (v[a_end[:, 1]] - v[a_end[:, 0]])
    t_new = np.concatenate([t[~hit], np.stack([c0, c1, mid], 1), np.stack([c0, mid, c2], 1)])
    return np.vstack([v, new_pts]), t_new


def random_retriangulate(v: np.ndarray, t: np.ndarray, target: int, rng: np.random.Generator):
    """An irregular triangulation of the same surface with about ``target`` vertices.

    Midpoint subdivision up to the largest level below the target, then the
    longest edges of randomly chosen triangles (in proportion to their area) are
    split at random points until the target is met (longest-edge bisection keeps
    triangles from turning into slivers), then every vertex slides a little
    inside one of its triangles. The result stays a manifold on the original
    surface, and no vertex keeps the template's position.
    """
    v, t = drop_unused(v, t)
    while 4 * len(v) <= target:  # each subdivision adds one vertex per edge, about three per vertex
        v, t = subdivide(v, t)
    while len(v) < target:
        v, t = _bisect_long_edges(v, t, target - len(v), rng)
    # Slide each vertex toward the inside of one of its triangles (a point still on the surface).
    owner = np.zeros(len(v), np.int64)
    for k in range(3):  # any triangle that has the vertex as a corner
        owner[t[:, k]] = np.arange(len(t))
    corner = t[owner]
    first = np.where(corner[:, 0] == np.arange(len(v)), 0, np.where(corner[:, 1] == np.arange(len(v)), 1, 2))
    others = corner[np.arange(len(v))[:, None], (first[:, None] + np.array([1, 2])) % 3]
    amount = rng.uniform(0.05, 0.25, size=(len(v), 1))
    split = rng.random((len(v), 1))
    target_pt = split * v[others[:, 0]] + (1 - split) * v[others[:, 1]]
    v = v + amount * (target_pt - v)
    return v, t


def _tilted(axis: np.ndarray, rng: np.random.Generator, degrees: float) -> np.ndarray:
    r = Rotation.from_rotvec(rng.normal(size=3) * np.radians(degrees) / np.sqrt(3))
    return r.apply(axis)


def _crop_mask(v: np.ndarray, lm: np.ndarray, labels: Sequence[str], rng: np.random.Generator, info: dict):
    """Vertices kept by random forehead, back-of-head and neck cuts (landmarks always kept)."""
    lab = {name: i for i, name in enumerate(labels)}
    keep = np.ones(len(v), bool)
    top_y = lm[lab["tr"], 1] if "tr" in lab else lm[:, 1].max()
    if rng.random() < 0.8:  # hairline / forehead cut
        off = rng.uniform(4.0, 45.0)
        nrm = _tilted(np.array([0.0, 1.0, 0.0]), rng, 8)
        keep &= (v - [0, top_y + off, 0]) @ nrm < 0
        info["forehead_cut_mm"] = round(off, 2)
    back_z = lm[:, 2].min()
    if rng.random() < 0.75:  # behind the ears, or further back
        off = rng.uniform(6.0, 110.0)
        nrm = _tilted(np.array([0.0, 0.0, -1.0]), rng, 8)
        keep &= (v - [0, 0, back_z - off]) @ nrm < 0
        info["back_cut_mm"] = round(off, 2)
    low_y = lm[:, 1].min()
    off = rng.uniform(8.0, 100.0)  # under the chin, or down the neck
    nrm = _tilted(np.array([0.0, -1.0, 0.0]), rng, 10)
    keep &= (v - [0, low_y - off, 0]) @ nrm < 0
    info["neck_cut_mm"] = round(off, 2)
    return keep


CROPS = SYNTH_CROPS


def _fixed_crop_mask(v: np.ndarray, lm: np.ndarray, labels: Sequence[str], crop: str, rng: np.random.Generator,
                     info: dict):
    """Vertices kept by one named crop: "face" (hairline, just behind the ears, under the
    chin), "front" (a face-only capture: as "face", but cut 2-12 mm in front of the tragions, so
    the ears are not scanned), "head" (the whole head down the neck) or "shoulders" (everything
    the head model has)."""
    lab = {name: i for i, name in enumerate(labels)}
    keep = np.ones(len(v), bool)
    if crop == "front":
        top_y = lm[lab["tr"], 1] if "tr" in lab else lm[:, 1].max()
        tragion = max(lm[lab[k], 2] for k in ("t_R", "t_L")) if "t_R" in lab and "t_L" in lab else lm[:, 2].min()
        keep &= v[:, 1] < top_y + rng.uniform(4.0, 20.0)
        keep &= v[:, 2] > tragion + rng.uniform(2.0, 12.0)
        keep &= v[:, 1] > lm[:, 1].min() - rng.uniform(8.0, 25.0)
    elif crop == "face":
        top_y = lm[lab["tr"], 1] if "tr" in lab else lm[:, 1].max()
        keep &= v[:, 1] < top_y + rng.uniform(4.0, 20.0)
        keep &= v[:, 2] > lm[:, 2].min() - rng.uniform(3.0, 20.0)
        keep &= v[:, 1] > lm[:, 1].min() - rng.uniform(8.0, 25.0)
    elif crop == "head":
        keep &= v[:, 1] > lm[:, 1].min() - rng.uniform(40.0, 100.0)
    info["crop"] = crop
    return keep


def check_variant(crop: str, spikes: float, closed_lips: float = 0.0) -> None:
    if crop not in CROPS:
        raise PalnetError("unknown crop {!r} (use {})".format(crop, ", ".join(CROPS)))
    if not 0.0 <= spikes < 0.5:
        raise PalnetError("spikes must be a fraction between 0 and 0.5, not {}".format(spikes))
    if not 0.0 <= closed_lips <= 1.0:
        raise PalnetError("closed lips must be a chance between 0 and 1, not {}".format(closed_lips))


def shoulders_mesh(rng: np.random.Generator, top_y: float = -150.0, drop: float = 180.0, step: float = 4.0):
    """A smooth upper torso under the head model, whose skin ends at the base of the neck
    (canonical frame, mm): an elliptic shell that starts at the outline of that end and
    rounds out to the shoulders, front and sides, as a head-and-shoulders scan shows it.
    Not joined to the head: alignment and ROI must not rely on topology."""
    width, depth = rng.uniform(175.0, 215.0), rng.uniform(90.0, 120.0)
    ys = np.arange(0.0, drop + step, step)
    ang = np.radians(np.arange(-25.0, 205.0 + 1e-9, step / 2.0))
    grow = np.sqrt(1.0 - (1.0 - np.clip(ys / 60.0, 0.0, 1.0)) ** 2)  # a rounded shoulder
    a = 122.0 + (width - 122.0) * grow
    b = 64.0 + (depth - 64.0) * grow
    x = a[:, None] * np.cos(ang)[None]
    z = -28.0 + b[:, None] * np.sin(ang)[None]
    y = np.broadcast_to((top_y - ys)[:, None], x.shape)
    verts = np.stack([x, y, z], axis=-1).reshape(-1, 3)
    n_a = len(ang)
    i, j = np.meshgrid(np.arange(len(ys) - 1), np.arange(n_a - 1), indexing="ij")
    q = (i * n_a + j).ravel()
    tris = np.concatenate([np.stack([q, q + n_a, q + 1], 1), np.stack([q + 1, q + n_a, q + n_a + 1], 1)])
    return verts, tris


def add_spikes(v: np.ndarray, t: np.ndarray, fraction: float, rng: np.random.Generator, protect: np.ndarray):
    """Scanner spikes: ``fraction`` of the vertices (none within 3 mm of a landmark) pushed
    3-30 mm out of or into the surface along their normal."""
    n = int(round(fraction * len(v)))
    if n <= 0:
        return v, 0
    near = cKDTree(protect).query(v, distance_upper_bound=3.0)[0] < np.inf
    pick = rng.choice(np.flatnonzero(~near), size=min(n, int((~near).sum())), replace=False)
    out = v.copy()
    length = rng.uniform(3.0, 30.0, len(pick)) * rng.choice([-1.0, 1.0], len(pick))
    out[pick] += vertex_normals(v, t)[pick] * length[:, None]
    return out, len(pick)


def _hole_mask(v: np.ndarray, nrm: np.ndarray, lm: np.ndarray, labels: Sequence[str],
               eyeballs: np.ndarray, rng: np.random.Generator, info: dict):
    """Vertices lost to holes: nostrils, under the chin, the eyes, random patches."""
    lab = {name: i for i, name in enumerate(labels)}
    tree = cKDTree(v)
    drop = np.zeros(len(v), bool)
    holes = []
    if "sn" in lab and rng.random() < 0.6:  # nostril openings face downwards
        near = np.array(tree.query_ball_point(lm[lab["sn"]] + [0, 2, -6], 14.0), dtype=np.int64)
        drop[near[nrm[near, 1] < -0.6]] = True
        holes.append("nostrils")
    if rng.random() < 0.5:  # under the chin, where the scanner does not look
        below = (v[:, 1] < lm[:, 1].min() - rng.uniform(3, 15)) & (nrm[:, 1] < -0.5)
        drop |= below
        holes.append("under_chin")
    for side in (0, 1):  # shiny eyes often come back empty
        if rng.random() < 0.3:
            eye = eyeballs[(v[eyeballs, 0] > 0) == bool(side)]
            drop[eye] = True
            holes.append("eye_{}".format("left" if side else "right"))
    for _ in range(rng.poisson(1.5)):
        centre = v[rng.integers(len(v))]
        drop[tree.query_ball_point(centre, rng.uniform(2.0, 9.0))] = True
        holes.append("patch")
    protect = cKDTree(lm).query(v, distance_upper_bound=3.5)[0] < np.inf
    info["holes"] = holes
    return drop & ~protect


def _pose(rng: np.random.Generator, pose: str):
    if pose == "realistic":
        jitter = Rotation.from_euler("xyz", rng.uniform(-30, 30, size=3), degrees=True).as_matrix()
        rot = jitter @ ICT_TO_LPS
    elif pose == "any":
        rot = Rotation.random(random_state=rng).as_matrix()
    elif pose == "canonical":
        rot = ICT_TO_LPS
    else:
        raise PalnetError("unknown pose {!r} (use realistic or any)".format(pose))
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = rng.uniform(-150, 150, size=3) if pose != "canonical" else 0.0
    return m


def generate_scan(seed: int, ict: Optional[IctModel] = None, pose: str = "realistic", units: str = "mm",
                  labels: Optional[Sequence[str]] = None, crop: str = "random", spikes: float = 0.0,
                  variety: Optional[Sequence[str]] = None, closed_lips: float = 0.0):
    """One synthetic scan: (Mesh, Landmarks, meta dict), a pure function of its arguments.

    ``crop`` "random" (the default mix of forehead, back-of-head and neck cuts) or one
    of "face", "head", "shoulders" (see _fixed_crop_mask); ``spikes`` the fraction of
    vertices turned into spikes. The identity and expression depend on the seed alone,
    so the same seed gives the same head in every variant.

    ``variety``: warp families (see :mod:`palnet.variety`); given (even empty), the head also
    gets a clinical expression or none and a scanner's habits (a face-only capture when
    ``crop`` is "random", a coarse mesh, hair), all drawn from a stream of their own.

    ``closed_lips``: the chance that the scanner sees the lips closed, a shallow crease where they
    meet, not the head model's fold deep into the mouth (:func:`palnet.variety.close_lips`; from a
    stream of its own: the scans it leaves open are the same as without it)."""
    check_variant(crop, spikes, closed_lips)
    if variety is not None:
        variety = check_families(variety)
    ict = ict or load_ict()
    labels = list(labels or LABELS)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), GENERATOR_VERSION]))
    info: dict = {"seed": int(seed), "generator_version": GENERATOR_VERSION}

    # About 1 % of draws at large spread give impossible anatomy (upper lip behind the
    # lower one): draw again, deterministically, until the landmarks are in order.
    for attempt in range(20):
        sigma = rng.uniform(0.7, 1.6)
        w = rng.normal(0.0, sigma, size=ict.identity.shape[0])
        e = np.zeros(ict.expression.shape[0])
        chosen = rng.choice(len(MILD_EXPRESSIONS), size=rng.integers(0, 4), replace=False)
        for i in chosen:
            e[ict.expression_names.index(MILD_EXPRESSIONS[i])] = rng.uniform(0.0, 0.35)
        verts = ict.neutral + np.tensordot(w.astype(np.float32), ict.identity, 1) \
            + np.tensordot(e.astype(np.float32), ict.expression, 1)
        lm = ict_landmark_positions(verts, labels)
        if labels != list(LABELS) or not anatomical_order_violations(lm):
            break
    info["draws"] = attempt + 1
    info.update(identity_sigma=round(float(sigma), 4), identity_weights=[round(float(x), 5) for x in w],
                expression={ict.expression_names[i]: round(float(e[i]), 4) for i in np.flatnonzero(e)})

    tri = ict.triangles
    scanner = None
    if variety is not None:
        verts, lm, tri, scanner = _vary_head(seed, ict, verts, w, e, lm, labels, variety, info)
        if crop == "random":
            crop = scanner["crop"]
            # a face-only capture cut in front of the ears, from a stream of its own (the rest stays)
            if np.random.default_rng(np.random.SeedSequence([int(seed), GENERATOR_VERSION, 4])).random() < 0.2:
                crop = info["variety"]["crop"] = "front"
    if closed_lips > 0.0 and np.random.default_rng(
            np.random.SeedSequence([int(seed), GENERATOR_VERSION, 5])).random() < closed_lips:
        closed = close_lips(verts, tri, mouth_rings(CLOSED_LIPS_RINGS), ict.neutral)
        info["closed_lips"] = closed is not None  # False: the lips were apart
        tri = tri if closed is None else closed
    nrm = vertex_normals(verts, tri)
    # Variants draw from their own stream: the default ("random", no spikes) stays as it always was.
    extra_rng = np.random.default_rng(np.random.SeedSequence([int(seed), GENERATOR_VERSION, 1]))
    if crop == "random":
        keep = _crop_mask(verts, lm, labels, rng, info)
    else:
        keep = _fixed_crop_mask(verts, lm, labels, crop, extra_rng, info)
    keep &= ~_hole_mask(verts, nrm, lm, labels, ict.eyeball_vertices, rng, info)
    tri = tri[keep[tri].all(axis=1)]
    # A landmark whose surroundings the crop took away is missing (NaN), not put on the cut.
    kept = np.unique(tri)
    gone = cKDTree(verts[kept]).query(lm)[0] > 2.0 if crop == "front" else np.zeros(len(lm), bool)
    if crop == "shoulders":
        sv, st = shoulders_mesh(extra_rng)
        tri = np.concatenate([tri, st + len(verts)])
        verts = np.concatenate([verts, sv.astype(verts.dtype)])

    target = int(np.exp(rng.uniform(np.log(10_000), np.log(200_000))))
    if scanner and scanner["hair_mm"]:
        verts = _with_hair(verts, tri, labels, lm, scanner["hair_mm"], seed)
    if scanner and scanner["coarse_edge_mm"]:
        v, t = drop_unused(verts, tri)
        target = coarse_target(v, t, scanner["coarse_edge_mm"])
        v, t = random_retriangulate(*decimate(v, t, target), target, rng)
    else:
        v, t = random_retriangulate(verts, tri, target, rng)

    noise = rng.uniform(0.0, 0.3)
    v = v + vertex_normals(v, t) * smooth_noise(t, len(v), noise, rng)[:, None]
    scan = Mesh(v, t, "mm")
    lm = closest_points_on_surface(scan, lm)[0]  # ground truth lies on the scanned surface
    if gone.any():
        lm[gone] = np.nan
        info["missing"] = [lab for lab, g in zip(labels, gone) if g]
    if spikes > 0:
        v, info["spikes"] = add_spikes(v, t, spikes, extra_rng, lm[~gone])

    m = _pose(rng, pose)
    s = unit_scale("mm", units)
    scan = Mesh((v @ m[:3, :3].T + m[:3, 3]) * s, t, units)
    lm = (lm @ m[:3, :3].T + m[:3, 3]) * s
    info.update(target_vertices=target, n_vertices=scan.n_vertices, n_triangles=scan.n_triangles,
                noise_sigma_mm=round(float(noise), 4), pose=pose, pose_matrix_mm=m.round(6).tolist(),
                units=units, source="ICT-FaceKit (c) 2020 USC Institute for Creative Technologies, MIT licence")
    return scan, Landmarks(labels, lm, units=units), info


def _vary_head(seed: int, ict: IctModel, verts: np.ndarray, w: np.ndarray, e: np.ndarray, lm: np.ndarray,
               labels: Sequence[str], families: Sequence[str], info: dict):
    """The head with a clinical expression and warps of ``families`` (see :mod:`palnet.variety`):
    (vertices, landmarks found again on them, scanned triangles, scanner settings)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), GENERATOR_VERSION, 2]))
    expression = draw_expression(ict.expression_names, rng)
    base = verts
    if expression:
        e = e.copy()
        for name, weight in expression.items():
            e[ict.expression_names.index(name)] = max(e[ict.expression_names.index(name)], weight)
        base = ict.neutral + np.tensordot(w.astype(np.float32), ict.identity, 1) \
            + np.tensordot(e.astype(np.float32), ict.expression, 1)
        lm = ict_landmark_positions(base, labels)
    # Strong warps can, rarely, push the lips through each other: weaker ones then, deterministically.
    for attempt, strength in enumerate((1.0, 0.7, 0.4, 0.0)):
        warped, used = warp_head(base, labels, lm, families, rng, strength=strength) if families else (base, [])
        new_lm = ict_landmark_positions(warped, labels)
        if list(labels) != list(LABELS) or not anatomical_order_violations(new_lm):
            break
    tri = ict.triangles
    blink = max(e[ict.expression_names.index(n)] for n in ("eyeBlink_L", "eyeBlink_R"))
    if blink > CLOSED_EYES_BLINK:  # closed lids hide the eyeballs from the scanner
        eye = np.zeros(len(warped), bool)
        eye[ict.eyeball_vertices] = True
        tri = tri[~eye[tri].any(axis=1)]
    scanner = scanner_settings(rng)
    info["variety"] = dict(families=list(used), strength=strength, expression=expression, **scanner)
    return warped, new_lm, tri, scanner


def _with_hair(verts: np.ndarray, tri: np.ndarray, labels: Sequence[str], lm: np.ndarray, thickness: float,
               seed: int) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), GENERATOR_VERSION, 3]))
    return add_hair(verts, vertex_normals(verts, tri), labels, lm, thickness, rng)


def scan_id(seed: int) -> str:
    return "synth_{:05d}".format(int(seed))


def write_scan(out_dir: Path, seed: int, ict: IctModel, pose: str, units: str, crop: str = "random",
               spikes: float = 0.0, variety: Optional[Sequence[str]] = None, closed_lips: float = 0.0) -> Path:
    scan, lms, info = generate_scan(seed, ict, pose, units, crop=crop, spikes=spikes, variety=variety,
                                    closed_lips=closed_lips)
    folder = Path(out_dir) / scan_id(seed)
    folder.mkdir(parents=True, exist_ok=True)
    write_mesh(scan, folder / "scan.ply")
    write_landmarks(lms, folder / "landmarks.mrk.json")
    tmp = folder / "meta.json.tmp"
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, folder / "meta.json")
    return folder


_WORKER: dict = {}


def _worker_init(ict_path, pose, units, crop="random", spikes=0.0, variety=None, closed_lips=0.0):
    _WORKER.update(ict=load_ict(ict_path), pose=pose, units=units, crop=crop, spikes=spikes, variety=variety,
                   closed_lips=closed_lips)


def _worker_run(args):
    out_dir, seed = args
    try:
        write_scan(out_dir, seed, _WORKER["ict"], _WORKER["pose"], _WORKER["units"], _WORKER["crop"],
                   _WORKER["spikes"], _WORKER["variety"], _WORKER["closed_lips"])
        return seed, None
    except Exception as exc:  # reported per scan; one bad draw never stops a data set
        return seed, "{}: {}".format(type(exc).__name__, exc)


def generate_dataset(out_dir, n: int, seed: int = 0, pose: str = "realistic", units: str = "mm",
                     ict_path=None, jobs: Optional[int] = None, progress=None, crop: str = "random",
                     spikes: float = 0.0, variety: Optional[Sequence[str]] = None,
                     closed_lips: float = 0.0) -> List[int]:
    """Write scans for seeds ``seed .. seed+n-1`` into ``out_dir``; returns the seeds that failed.
    ``variety``: see :func:`generate_scan`."""
    import multiprocessing as mp
    if units not in ("mm", "cm", "m"):
        raise PalnetError("unknown units {!r} (use mm, cm or m)".format(units))
    if pose not in ("realistic", "any", "canonical"):
        raise PalnetError("unknown pose {!r} (use realistic or any)".format(pose))
    check_variant(crop, spikes, closed_lips)
    if variety is not None:
        variety = check_families(variety)
    load_ict(ict_path)  # fail early, in this process, with a clear message
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    tasks = [(str(out_dir), s) for s in range(seed, seed + n)]
    jobs = max(1, min(jobs or os.cpu_count() or 1, n))
    failed = []
    if jobs == 1:
        _worker_init(ict_path, pose, units, crop, spikes, variety, closed_lips)
        results = map(_worker_run, tasks)
        pool = None
    else:
        pool = mp.get_context("spawn" if os.name == "nt" else "fork").Pool(
            jobs, initializer=_worker_init, initargs=(ict_path, pose, units, crop, spikes, variety, closed_lips))
        results = pool.imap_unordered(_worker_run, tasks)
    try:
        for done, (s, err) in enumerate(results, 1):
            if err:
                failed.append(s)
            if progress:
                progress(done, n, scan_id(s), err)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return sorted(failed)


def face_template(ict: Optional[IctModel] = None, spacing: float = 4.0, n_modes: int = 10):
    """Points on the central face of the neutral ICT head (canonical frame, mm) for alignment,
    and the first identity modes at those points (n_modes, N, 3), so the aligner can let the
    template take the scanned face's shape.

    Brows to chin and cheek to cheek, without ears, neck or hairline: the part
    that every face scan shows.
    """
    ict = ict or load_ict()
    idx = ict.skin_vertices[ict.skin_vertices < NARROW_FACE_END]
    idx = idx[(ict.neutral[idx, 1] > -85.0) & (ict.neutral[idx, 1] < 88.0)]
    pts = grid_subsample(ict.neutral[idx], spacing)
    chosen = idx[cKDTree(ict.neutral[idx]).query(pts)[1]]
    return ict.neutral[chosen], ict.identity[:n_modes, chosen].astype(np.float64)
