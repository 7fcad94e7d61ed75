"""predict(mesh, model) -> landmarks: align -> roi -> patches -> network -> back -> snap.

Everything here is NumPy/SciPy: the network runs through :mod:`palnet.engine`,
never through torch, so the Slicer module and the command line work without it.
"""
import time
from dataclasses import dataclass, field, replace
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from scipy.spatial import cKDTree

from .anatomy import describe_out_of_order, out_of_order, out_of_order_labels, restore_order
from .auricle import AURICLE_RADIUS_MM, EAR_NAMES, describe_flat_ears, ears_not_made_out
from .arbitrate import NETWORK, OTHERS, REGISTRATION, SOURCE_TEXT, combine, describe_sources, rule_from, triggered
from .align import THOROUGH, Alignment, align_scan, detect_units
from .cleanup import FRAGMENT_GAP_MM, MIN_SPIKE_MM, find_fragments, find_spikes, remove_vertices
from .geometry import cluster_decimate, edges_and_border, vertex_normals
from .errors import PalnetError
from .modelfile import Model
from .options import DEFAULT_SAMPLINGS, DEFAULT_SNAP
from .landmark_io import describe
from .patches import extract_patches, initial_approximation, roi_samples
from .priors import (FLIP, SYMMETRIC_MEAN_MM, apply_shape_prior, choice_weight, landmark_confidence, landmark_modes,
                     mirror_landmarks, model_swap, prior_choice, second_round, shape_prior, symmetric_start,
                     symmetric_swap)
from .registration import register_template
from .resources import face_template_path
from .snap import snap_to_surface
from .status import LOW_FIT, NOT_A_FACE, OK, PARTIAL
from .datatypes import Landmarks, Mesh, unit_scale

# Above this template-to-scan RMS (distances capped at 8 mm) the face fit is doubtful; well
# above, it is no face. Below this fraction of the (shape-fitted) face template within 5 mm of
# the scan, likewise. Measured on 1000 alignments of 500 held-out heads (realistic pose, and any
# pose/units/crop with 2% spikes; tools/bench_robust.py): every correct fit had RMS <= 3.16 mm
# and coverage >= 0.893; the 7 that ended far off had RMS >= 4.13 mm and coverage <= 0.76.
# A sphere covers 0.46, a box 0.51, a plane 0.31.
LOW_FIT_RMS_MM = 3.5
NOT_A_FACE_RMS_MM = 6.5
LOW_FIT_INLIERS = 0.85
NOT_A_FACE_INLIERS = 0.62
# Below this surface agreement (align.surface_agreement) the scan is no surface where the face
# should be: a cloud filling a volume. Measured: 66 held-out faces (realistic, and any pose with
# face/head/shoulders crops and spikes) >= 0.93; a Gaussian noise cloud 0.35.
NOT_A_FACE_AGREEMENT = 0.6
SPARSE_VERTICES = 2000  # fewer vertices than this cannot show a face's detail
# A landmark is missing from the scan (a hole, a cut) when no surface lies within this distance
# of where the fitted face template puts it, and the surface nearest that spot is the scan's
# border (its nearest border vertex within MISSING_BORDER_MM farther than its nearest vertex):
# the spot looks into a hole or past a cut, not at surface the template missed. Measured on 100
# scans of training seeds (2000-2099, with the generator's random holes, which spare 3.5 mm
# around each landmark), landmarks well inside the template (10 of its points within 8 mm) came
# at most 5.0 mm from the surface on a border; the others (chin, ears, tragion, gonion,
# trichion), whose fitted place is less sure, up to 13.2 mm. Holes of 8-15 mm radius over a
# landmark inside the template: 6.6-12.0 mm.
MISSING_SURFACE_MM = 6.5
MISSING_OUTSIDE_MM = 15.0
MISSING_BORDER_MM = 1.0
# Past the scan's edge by more than this (see missing_landmarks): measured on 200 held-out test
# scans (every landmark on the surface), spots of landmarks inside the template came up to 3.1 mm
# past an edge, thinly covered ones (trichion over a hairline cut, menton over a cut under the
# chin) up to 8.4 mm; on captures cut 3 mm in front of the tragions the ear points lay 3.0-35 mm
# past the cut, superaurale and postaurale 18-35 mm.
MISSING_PAST_EDGE_MM = 6.0
MISSING_PAST_EDGE_THIN_MM = 10.0
# An ear point this far past the edge is missing once the ear's top or back is. And once both
# are, its points whose nearest surface is the border are missing too: on 100 face-only
# captures (seeds 1000-1099, cut 2-12 mm in front of the tragions, where the truth has no ear
# point) 49 tragions, subauralia and otobasia were placed on the cut, less than 2 mm past it;
# the border rule takes 36 of them, and one subaurale the cut had left. On 100 warped faces of
# the training families it takes 3 of 10 such placements and no landmark the truth has. (With
# the top or the back alone it took 42 and 5, but on the 200 whole test heads it added a
# superaurale to a postaurale falsely missing.)
EAR_PAST_EDGE_MM = 2.0
EAR_ANCHORS = ("sa", "pa")  # the top and the back of the ear: far past the cut when the ear is gone
# The gonion lies at the face template's edge (fewer than TEMPLATE_SUPPORT_POINTS of its points
# near it), yet the fitted template places it about as surely as the landmarks inside: on the 200
# held-out whole heads its spot lay at most 8.0 mm from the surface, never with the border nearest.
# With the border nearest it is judged by the limits of the landmarks inside (MISSING_SURFACE_MM,
# MISSING_PAST_EDGE_MM). On 100 face-only captures of training seeds (3000-3099, cut 2-12 mm in
# front of the tragions, where the truth has no gonion the cut passed within 2 mm of) that reports
# 72 of the 113 gonions the truth lacks missing, 15 before, and 6 of the 87 it has, none before;
# on 100 scans with the generator's holes (seeds 2000-2099), none either way.
FIRM_EDGE_NAMES = ("go",)
TEMPLATE_SUPPORT_MM = 8.0  # a landmark with TEMPLATE_SUPPORT_POINTS template points this close is well inside it
TEMPLATE_SUPPORT_POINTS = 10
CONFIDENCE_SAMPLES = 12  # perturbed extra runs of the network per scan
PERTURB_MM = 1.0  # spread of their starting points around the initial approximation
PERTURB_DEGREES = 3.0  # and of the turns of their patches
# Before a second round the first answer is only a start: the unjittered run and its mirror
# image (predict_with_spread with 2 samples) do. On 100 held-out test scans: point-wise error
# +0.002 mm against 12 in both rounds, the network's time per scan 0.68 -> 0.30 s. (Training
# learns the first round's prior from the answers of all runs: the better estimate of its error.)
FIRST_ROUND_SAMPLES = 2
# Each network step reads the patches of the two samples nearest a point, blended (run_network):
# on 60 test scans each predicted again with its coordinates changed by one part in a billion
# (what another CPU's rounding does), the landmarks of 5 scans moved by over 0.01 mm (up to 6.7 mm)
# with the nearest sample alone, of 1 scan with two (its alignment itself moved by 0.6 mm);
# point-wise error 1.669 -> 1.663 mm; the network's time doubles (about 0.3 s more per scan).
SNAP_CANDIDATES = 2
# A landmark that breaks the anatomical order (palnet.anatomy) is wrong, or its partner is: its
# confidence is at most this.
OUT_OF_ORDER_CONFIDENCE = 0.25


Progress = Callable[[str, float], None]  # (stage, fraction of the work done); see predict


def _no_progress(stage: str, fraction: float) -> None:
    pass


@dataclass
class Prediction:
    """Landmarks in the scan's own frame and units, with how the scan was read."""

    landmarks: Landmarks
    status: str  # one of status.SCAN_STATUSES: ok, partial (some landmarks missing), low fit, not a face
    units: str
    alignment: Alignment
    seconds: float
    timings: dict = field(default_factory=dict)
    # per landmark: how far perturbed runs land from the answer (canonical mm: for a face read at another
    # size, 1 / alignment.scale times the scan's mm; the confidence is calibrated on them)
    spread_mm: Optional[np.ndarray] = None
    message: str = ""  # why the status is not "ok"
    spikes_removed: int = 0  # scanner spikes left out of alignment, patches and snapping
    fragments_removed: int = 0  # vertices of loose fragments left out likewise
    missing: Tuple[str, ...] = ()  # landmarks where the scan has no surface (NaN points, confidence 0)
    # per landmark: "network", "registration" or "both" (see palnet.arbitrate), or "others" (placed where the
    # shape prior puts it from the other landmarks: the network's answer broke the anatomical order)
    sources: Tuple[str, ...] = ()
    # landmarks whose network answer broke the anatomical order (a stand-in may now give them: see sources)
    # or that still break it once snapped (see palnet.anatomy)
    out_of_order: Tuple[str, ...] = ()

    @property
    def fit_rms_mm(self) -> float:
        """The face template's fit (RMS), in the scan's mm (the status judges it at the template's size)."""
        return self.alignment.rms_mm * self.alignment.scale


@dataclass
class PreparedScan:
    """A scan in the model's canonical frame, ready for patch extraction."""

    units: str
    alignment: Alignment
    samples: np.ndarray  # even surface samples of the region of interest, canonical mm
    tree: cKDTree
    clean: Mesh  # the scan without spikes and loose fragments, its own frame and units
    spikes: int = 0
    fragments: int = 0
    border: Optional[np.ndarray] = None  # mask of clean's border vertices, when already known
    dense: Optional["DenseScan"] = None  # the scan as read, when ``clean`` is its decimated copy


def scan_status(alignment: Alignment, n_vertices: int) -> Tuple[str, str]:
    """("ok" | "low fit" | "not a face", the reason when not ok) from how well the face template fits."""
    rms, inl, agree = alignment.rms_mm, alignment.inlier_fraction, alignment.surface_agreement
    # judged at the template's size (canonical mm), told in the scan's mm
    fit = "template fit {:.1f} mm RMS, {:.0f}% of the face template on the surface".format(rms * alignment.scale,
                                                                                          100 * inl)
    if agree < NOT_A_FACE_AGREEMENT:  # NaN (not measured) compares False
        fit += ", {:.0f}% of the points over it on it".format(100 * agree)
    if rms > NOT_A_FACE_RMS_MM or inl < NOT_A_FACE_INLIERS or agree < NOT_A_FACE_AGREEMENT:
        status, message = NOT_A_FACE, "the surface does not look like a face ({})".format(fit)
    elif rms > LOW_FIT_RMS_MM or inl < LOW_FIT_INLIERS:
        status, message = LOW_FIT, "the face fits the template poorly ({}): check the landmarks".format(fit)
    else:
        return OK, ""
    if n_vertices < SPARSE_VERTICES:
        message += "; only {} vertices".format(n_vertices)
    return status, message


def model_arrays(model: Model):
    """(template, mean landmarks, patch settings) from a model's metadata."""
    meta = model.metadata
    try:
        template = np.asarray(meta["template"], dtype=np.float64).reshape(-1, 3)
        mean = np.asarray(meta["mean_landmarks"], dtype=np.float64).reshape(-1, 3)
        patch = meta["patch"]
        spacing, scale = float(patch["spacing_mm"]), float(patch["scale_mm"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PalnetError("model metadata lacks {}".format(exc), model.source)
    if len(mean) != model.config.n_landmarks:
        raise PalnetError("model has {} mean landmarks for {} outputs".format(len(mean), model.config.n_landmarks),
                          model.source)
    return template, mean, spacing, scale


def template_modes(template: np.ndarray) -> Optional[np.ndarray]:
    """Shape modes for ``template`` when it is the shipped face template (see align_scan)."""
    path = face_template_path()
    key = (str(path), template.shape)
    if key not in _MODES_CACHE:
        modes = None
        if path.exists():
            with np.load(path, allow_pickle=False) as d:
                if "modes" in d.files and d["points"].shape == template.shape and \
                        np.allclose(d["points"], template, atol=1e-3):
                    modes = d["modes"].astype(np.float64)
        _MODES_CACHE[key] = modes
    return _MODES_CACHE[key]


_MODES_CACHE: dict = {}


class Canonical(NamedTuple):
    """A scan taken to the canonical frame (see to_canonical_frame)."""

    units: str
    alignment: Alignment
    mesh: Mesh  # in the canonical frame, mm, without spikes
    clean: Mesh  # the scan in its own frame and units, without spikes: what landmarks are snapped onto
    spikes: int  # vertices taken out as spikes
    fragments: int = 0  # vertices taken out as loose fragments
    border: Optional[np.ndarray] = None  # mask of the clean mesh's border vertices, when already known
    dense: Optional["DenseScan"] = None  # the scan as read, when ``clean`` is its decimated copy


# A scan with more vertices than this, whose edges are shorter than DENSE_CELL_MM, is decimated
# by vertex clustering (geometry.cluster_decimate) before cleanup: the later stages read the
# surface at 1 mm (alignment) and 1.5 mm (the network's samples), so cubes of half the
# network's spacing lose nothing they see, and time and memory stop growing with the scanner's
# resolution. Landmarks are still snapped onto the scan's own vertices (see snapping_mesh).
DENSE_VERTICES = 400_000
DENSE_CELL_MM = 0.75


class DenseScan(NamedTuple):
    """A dense scan as read, and where each of its vertices went in the decimated clean copy."""

    mesh: Mesh
    kept: np.ndarray  # (N,) each vertex's clean vertex, -1 where its cluster was a spike or a fragment


def _decimated(mesh: Mesh, to_mm: float) -> Optional[Tuple[Mesh, np.ndarray]]:
    """(the decimated copy, each vertex's cluster) of a dense scan (see DENSE_VERTICES), else None."""
    if mesh.n_vertices <= DENSE_VERTICES:
        return None
    cell = DENSE_CELL_MM / to_mm
    if mesh.n_triangles:
        t = mesh.triangles[:: max(1, mesh.n_triangles // 20_000)]
        edge = np.median(np.linalg.norm(mesh.vertices[t[:, 0]] - mesh.vertices[t[:, 1]], axis=1))
        if not edge < 0.5 * cell:  # already about as coarse: nothing to gain
            return None
    clusters = cluster_decimate(mesh.vertices, mesh.triangles, cell)
    return Mesh(clusters.vertices, clusters.triangles, mesh.units, mesh.source), clusters.cluster


def snapping_mesh(prep: "PreparedScan", points: np.ndarray, method: str, tree: cKDTree) -> Mesh:
    """What ``points`` (the scan's frame and units) are snapped onto: the clean scan, or for a
    decimated dense scan the part of the scan as read, without its spikes and fragments, that
    holds the nearest vertices and triangles of every point (``tree``: of prep.clean's vertices)."""
    if prep.dense is None:
        return prep.clean
    full, kept = prep.dense
    cell = DENSE_CELL_MM / unit_scale(prep.units, "mm")
    # A vertex nearest a point lies within its cluster's cube of the cluster's centre, so the
    # clusters within (the nearest centre's distance + two cube diagonals) hold it; the margin
    # covers mean-k's neighbours and the triangles around the nearest vertex.
    reach = tree.query(points)[0] + 2.0 * np.sqrt(3.0) * cell + 4.0 * cell
    near = np.zeros(len(prep.clean.vertices) + 1, bool)
    for idx in tree.query_ball_point(points, reach):
        near[idx] = True
    keep = near[kept]  # kept == -1 reads the extra False
    tri = full.triangles[keep[full.triangles].all(axis=1)] if method == "surface" and full.n_triangles else \
        np.zeros((0, 3), np.int64)
    remap = np.cumsum(keep) - 1
    return Mesh(full.vertices[keep], remap[tri], full.units, full.source)


def to_canonical_frame(mesh: Mesh, template: np.ndarray, units: str = "auto",
                       modes: Optional[np.ndarray] = None, progress: Optional[Progress] = None) -> Canonical:
    """Units to mm, spikes and loose fragments out, automatic alignment: the scan in the canonical frame.

    Prediction and training preprocessing both start here, so a scan is aligned the same way in both.
    ``progress``: see :func:`predict`.
    """
    report = progress or _no_progress
    if mesh.n_vertices < 3:
        raise PalnetError("the scan has {} vertices: nothing to place landmarks on".format(mesh.n_vertices),
                          mesh.source)
    if not np.isfinite(mesh.vertices).all():
        raise PalnetError("the scan has NaN or infinite coordinates", mesh.source)
    try:
        report("cleanup", 0.0)
        units = detect_units(mesh.vertices) if units == "auto" else units
        to_mm = unit_scale(units, "mm")
        decimated = _decimated(mesh, to_mm)
        work = mesh if decimated is None else decimated[0]
        # The edge list serves both searches unless spikes leave the mesh (then its edges change).
        edges = edges_and_border(work.triangles, work.n_vertices) if work.n_triangles else None
        spike = find_spikes(work, min_offset=MIN_SPIKE_MM / to_mm, edges=edges, clustered=decimated is not None)
        spikes = int(spike.sum())
        clean = remove_vertices(work, spike) if spikes else work
        loose = find_fragments(clean, gap=FRAGMENT_GAP_MM / to_mm, edges=None if spikes else edges)
        if loose.any():
            clean = remove_vertices(clean, loose)
        dense, fragments = None, int(loose.sum())
        if decimated is not None:  # counted in the scan's own vertices
            survived = np.flatnonzero(~spike)[~loose]
            kept = np.full(work.n_vertices, -1, np.int64)
            kept[survived] = np.arange(len(survived))
            kept = kept[decimated[1]]
            dense = DenseScan(mesh, kept)
            spikes = int(spike[decimated[1]].sum())
            fragments = int((kept < 0).sum()) - spikes
        mm = clean.vertices * to_mm
        report("alignment", 0.1)
        alignment = align_scan(mm, template, modes=modes, triangles=clean.triangles)
        if scan_status(alignment, clean.n_vertices)[0] != OK:  # rare: search wider, keep the better fit
            report("alignment (wider search)", 0.3)
            again = align_scan(mm, template, modes=modes, triangles=clean.triangles, effort=THOROUGH,
                               known=alignment)
            if again.rms_mm < alignment.rms_mm:
                alignment = again
        alignment = _sized_alignment(mm, template, modes, clean, alignment, report)
    except PalnetError as exc:  # name the scan
        raise PalnetError(exc.message, exc.path or mesh.source) from None
    border = edges[1] if edges is not None and not spikes and not loose.any() else None
    return Canonical(units, alignment, Mesh(alignment.to_canonical(mm), clean.triangles, "mm", mesh.source),
                     clean, spikes, fragments, border, dense)


# Faces far from the template's size (a child's; a scan whose units are not what its numbers
# suggest) are read at a size nearer the template's: the network is most accurate on the sizes
# it was trained on (synthetic faces 0.8 and 1.2 times their size: 1.73 and 1.77 mm scaled back
# against 1.61 mm as they are, 1.61 mm both when brought back to their size), and a face at
# 0.75 or 1.25 times can defeat the rigid search altogether. A face that even the wider search
# fits poorly, and in the wrong place (SIZE_TRY_AGREEMENT), is searched scaled by each of
# SIZE_TRIES, and a better fit of status ok is kept.
# Then a face whose size (Alignment.size) lies outside SIZE_RANGE is aligned again scaled to
# the nearer end of the range, kept when it fits as well (ok for an ok fit; ok or low fit for a
# low fit, as real scans mostly are). The canonical frame then holds the face at that size
# (Alignment.scale).
SIZE_RANGE = (0.88, 1.12)
SIZE_TRIES = (1.25, 0.8)
# ... tried only when the poor fit's surface agreement is low too: 0.59-0.80 on seven faces far
# from the template's size that were fitted upside down or on the back of the head, 0.89-0.94 on
# the real scans fitted in place, which then do not pay for two more searches (about 2 s); and
# only when the fit is near a face at all (RMS within NOT_A_FACE_RMS_MM: 4.0-5.1 mm on those
# seven), not for a sphere, whose every search takes 5-15 s and ends at the 8 mm cap.
SIZE_TRY_AGREEMENT = 0.85


def _sized_alignment(mm: np.ndarray, template: np.ndarray, modes, clean: Mesh, alignment: Alignment,
                     report: Progress) -> Alignment:
    status = scan_status(alignment, clean.n_vertices)[0]
    if status != OK and not alignment.surface_agreement >= SIZE_TRY_AGREEMENT and \
            alignment.rms_mm <= NOT_A_FACE_RMS_MM:
        for k in SIZE_TRIES:
            report("alignment (other sizes)", 0.4)
            other = align_scan(mm * k, template, modes=modes, triangles=clean.triangles)
            if scan_status(other, clean.n_vertices)[0] == OK and other.rms_mm < alignment.rms_mm:
                alignment, status = replace(other, scale=1.0 / k), OK
    if status == NOT_A_FACE or alignment.scale != 1.0 or SIZE_RANGE[0] <= alignment.size <= SIZE_RANGE[1]:
        return alignment
    k = float(np.clip(alignment.size, *SIZE_RANGE)) / alignment.size
    report("alignment (other sizes)", 0.4)
    other = align_scan(mm * k, template, modes=modes, triangles=clean.triangles)
    if scan_status(other, clean.n_vertices)[0] in ((OK,) if status == OK else (OK, LOW_FIT)):
        alignment = replace(other, scale=1.0 / k)
    return alignment


def sized_note(scale: float) -> str:
    """What the summary says of a face read at another size (Alignment.scale)."""
    return "the face is about {:.2f} times the face template's size: it was aligned and read scaled nearer " \
           "that size".format(scale)


def prepare_scan(mesh: Mesh, template: np.ndarray, mean_landmarks: np.ndarray, spacing: float,
                 units: str = "auto", modes: Optional[np.ndarray] = None,
                 progress: Optional[Progress] = None) -> PreparedScan:
    """Units to mm, spikes out, automatic alignment, region of interest and even sampling."""
    c = to_canonical_frame(mesh, template, units, modes, progress)
    (progress or _no_progress)("sampling", 0.5)
    samples = roi_samples(c.mesh, _roi_anchors(mean_landmarks), spacing)
    if len(samples) < 10:
        raise PalnetError("no surface near the face after alignment", mesh.source)
    return PreparedScan(c.units, c.alignment, samples, cKDTree(samples), c.clean, c.spikes, c.fragments, c.border,
                        c.dense)


def _roi_anchors(mean_landmarks: np.ndarray) -> np.ndarray:
    """The points whose surroundings are sampled: the mean landmarks and their mirror image, so
    that a scan's mirror image gets the mirror image of the region (the mean landmarks are not
    quite symmetric); a model whose mean is not nearly its own mirror image keeps its own."""
    flipped = mean_landmarks * FLIP
    symmetric = cKDTree(mean_landmarks).query(flipped)[0].max() <= SYMMETRIC_MEAN_MM
    return np.vstack([mean_landmarks, flipped]) if symmetric else mean_landmarks


def sampled_again(prep: PreparedScan, mean_landmarks: np.ndarray, spacing: float, seed: int) -> cKDTree:
    """A search tree of the scan's region of interest sampled anew, with another ``seed`` (the
    samples' places on their triangles), as :func:`prepare_scan` samples it with seed 0."""
    canonical = prep.alignment.to_canonical(prep.clean.vertices * unit_scale(prep.units, "mm"))
    samples = roi_samples(Mesh(canonical, prep.clean.triangles, "mm", prep.clean.source),
                          _roi_anchors(mean_landmarks), spacing, seed)
    return cKDTree(samples) if len(samples) >= 10 else prep.tree


class NetworkStart(NamedTuple):
    """Where the network starts on a prepared scan (canonical mm)."""

    swap: Optional[np.ndarray]  # the mirror pairs, when the model's mean landmarks are their own mirror image
    start: np.ndarray  # the starting shape (L, 3), averaged with the mirror image's where ``swap`` allows
    init: np.ndarray  # the start moved onto the scan's samples: the network's first input


def network_start(prep: PreparedScan, model: Model, mean: np.ndarray) -> NetworkStart:
    """The network's start on ``prep`` as :func:`predict` makes it (``mean``: the model's mean
    landmarks, :func:`model_arrays`); the tools that learn from predict's answers start here too."""
    swap = symmetric_swap(mean, model_swap(model))  # None: no averaging with the mirror image's start
    start = symmetric_start(mean, prep.alignment.shape, prep.alignment.mirror_shape, landmark_modes(model), swap)
    return NetworkStart(swap, start, initial_approximation(prep.tree, start))


def run_network(tree: cKDTree, model: Model, starts: np.ndarray, steps: int, scale: float,
                turns: Optional[np.ndarray] = None, candidates: int = SNAP_CANDIDATES) -> np.ndarray:
    """Landmarks (B, L, 3) from B sets of starting points (B, L, 3), each refined ``steps`` times.

    ``turns`` (B, 3, 3) shows each set its patches slightly rotated (the answer is
    turned back), as a slightly different alignment would.

    The network reads a patch centred on a sample, as in training. Each step reads it at the
    ``candidates`` samples nearest each point and blends their answers with weights that fall
    to zero as a sample stops being one of them ((1 - (d / d_next)^2)^2, d_next the distance of
    the next nearest sample): the answer moves continuously with the point and with the scan.
    Read at the nearest sample alone (``candidates`` 1), it jumps when another sample becomes
    the nearest, and a change in the last bits of the arithmetic could move a landmark by 1 mm.
    (The network regresses all landmarks together, so where a sample leaves a point's
    candidates, with weight zero for its own landmark, the other landmarks still take a small
    step: that is rarer, and smaller.)
    """
    centres = np.asarray(starts, dtype=np.float64)
    b, n = centres.shape[:2]
    k = max(1, min(int(candidates), tree.n - 1))
    for _ in range(max(1, steps)):
        if k == 1:
            patches, at = extract_patches(tree, centres, model.config.patch_size, scale)
        else:
            d, idx = tree.query(centres.reshape(-1, 3), k=k + 1)
            weight = (1.0 - (d[:, :k] / np.maximum(d[:, k:], 1e-12)) ** 2) ** 2
            weight[:, 0] += 1e-12  # points at the next sample's distance, all of them: the nearest
            weight /= weight.sum(axis=1, keepdims=True)
            # The network reads all landmarks' patches together: the i-th patch set holds each
            # landmark's candidate of i-th lowest sample number, so that two candidates trading
            # places in distance change no patch set (the answers of the other landmarks stay).
            order = np.argsort(idx[:, :k], axis=1)
            weight = np.take_along_axis(weight, order, axis=1)
            chosen = np.take_along_axis(idx[:, :k], order, axis=1).reshape(b, n, k).transpose(0, 2, 1)
            # The runs' points gather near the same few samples: each sample's patch is found once.
            unique, which = np.unique(chosen, return_inverse=True)
            at = tree.data[chosen].reshape(b * k, n, 3)
            patches = extract_patches(tree, tree.data[unique], model.config.patch_size, scale)[0][
                which.reshape(-1)].reshape((b * k, n) + (-1, 3))
        turned = None if turns is None else np.repeat(turns, k, axis=0)
        if turned is not None:  # each patch set turned by its run's turn: (B, L*P, 3) @ (B, 3, 3)
            shape = patches.shape
            patches = np.matmul(patches.reshape(shape[0], -1, 3), turned.astype(np.float32).transpose(0, 2, 1)
                                ).reshape(shape)
        offsets = model.forward(patches).astype(np.float64)
        if turned is not None:
            offsets = np.matmul(offsets, turned)
        answers = at + offsets * scale
        if k == 1:
            centres = answers
        else:
            answers = answers.reshape(b, k, n, 3)
            centres = (weight.reshape(b, n, k).transpose(0, 2, 1)[..., None] * answers).sum(axis=1)
    return centres


def predict_with_spread(tree: cKDTree, model: Model, init: np.ndarray, steps: int, scale: float,
                        samples: int = CONFIDENCE_SAMPLES):
    """The network's answer (L, 3) and, per landmark, how sure it is: one run from ``init``
    and ``samples`` more started from jittered points with slightly turned patches, as a
    slightly different alignment and sampling would give; the answer is their mean, the
    spread (mm) their RMS distance from it. A single run can move by a mm or more when the
    alignment moves by a few hundredths of a mm (its patch centres snap onto samples, and
    which samples make up a patch changes in steps); the mean is steadier and closer to
    the truth. One batched pass; deterministic.

    When the protocol pairs its side landmarks, half of the runs look at the mirror image of
    the scan (x -> -x in the canonical frame, where the face template is symmetric) and their
    answers are mirrored back, and the jitters come in mirrored pairs: a face and its mirror
    image then get mirrored answers from the network, whatever side it learned better."""
    rng = np.random.default_rng(0)
    k = max(0, int(samples))
    swap = model_swap(model)
    if swap is None or k < 2:
        starts = np.concatenate([init[None], init + rng.normal(0, PERTURB_MM, (k,) + init.shape)])
        turns = np.concatenate([np.eye(3)[None], _small_rotations(rng, k, PERTURB_DEGREES)])
        runs = run_network(tree, model, starts, steps, scale, turns)
    else:
        half = (k + 1) // 2 // 2  # mirrored pairs of jitters per side; with the unjittered run about k+1 runs
        jitter = rng.normal(0, PERTURB_MM, (half,) + init.shape)
        turn = _small_rotations(rng, half, PERTURB_DEGREES)
        flip = np.diag(FLIP)
        jitters = np.concatenate([np.zeros((1,) + init.shape), jitter, mirror_landmarks(jitter, swap)])
        turns = np.concatenate([np.eye(3)[None], turn, flip @ turn @ flip])
        mirrored = cKDTree(tree.data * FLIP)
        plain = run_network(tree, model, init + jitters, steps, scale, turns)
        seen = run_network(mirrored, model, mirror_landmarks(init, swap) + jitters, steps, scale, turns)
        runs = np.concatenate([plain, mirror_landmarks(seen, swap)])
    answer = runs.mean(axis=0)
    spread = np.sqrt(((runs - answer) ** 2).sum(axis=2).mean(axis=0)) if k else np.zeros(len(init))
    return answer, spread


def network_answer(tree: cKDTree, model: Model, init: np.ndarray, steps: int, scale: float,
                   samples: int = CONFIDENCE_SAMPLES, missing: Optional[np.ndarray] = None):
    """What ``predict`` answers (L, 3), canonical mm, and the spread behind its confidence: the
    network's answer (:func:`predict_with_spread`, from ``init``) after the model's shape prior;
    with a second round, the network once more from there (``samples`` extra runs, the second
    round's passes) and that round's prior, whose spread counts; the first round then runs only
    FIRST_ROUND_SAMPLES extra runs. The prior-corrected answer is a better start than the first
    one, nearest the truth exactly where the network was loosest.
    ``missing``: the landmarks the scan does not show (see apply_shape_prior).

    A model with a narrower second prior (``prior_choice``, see :func:`palnet.priors.prior_choice`)
    weighs the two priors' answers, in both rounds, by how well the narrow one explains the
    network's first answer (:func:`palnet.priors.choice_weight`)."""
    swap = model_swap(model)
    again = second_round(model)
    choice = prior_choice(model)
    first = min(samples, FIRST_ROUND_SAMPLES) if again else samples
    answer, spread = predict_with_spread(tree, model, init, steps, scale, first)
    w = choice_weight(answer, choice, swap, missing) if choice else 0.0

    def corrected(points: np.ndarray, broad, narrow) -> np.ndarray:
        out = apply_shape_prior(points, broad, swap, missing)
        if w > 0.0 and narrow is not None:
            out = (1.0 - w) * out + w * apply_shape_prior(points, narrow, swap, missing)
        return out

    answer = corrected(answer, shape_prior(model), choice[0] if choice else None)
    if again:
        answer, spread = predict_with_spread(tree, model, initial_approximation(tree, answer), again[0], scale, samples)
        answer = corrected(answer, again[1], choice[1] if choice else None)
    return answer, spread


def predict(mesh: Mesh, model: Model, snap: str = DEFAULT_SNAP, units: str = "auto",
            refine_steps: Optional[int] = None, confidence_samples: int = CONFIDENCE_SAMPLES,
            progress: Optional[Progress] = None, samplings: int = DEFAULT_SAMPLINGS) -> Prediction:
    """Place the model's landmarks on ``mesh`` (any pose, units mm/cm/m or "auto").

    ``samplings`` > 1 samples the scan's surface that many times (other seeds: the same density,
    other places on the triangles) and averages the network's answers on each, and their spreads:
    the network's answer moves by about half a mm from one sampling to the next, so the mean is
    closer to the truth, at the network's cost once per sampling (options.DEFAULT_SAMPLINGS).

    ``progress(stage, fraction)`` is called as each stage starts (cleanup, alignment, sampling,
    network, snapping) with the rough fraction of the work done; an exception it raises (a
    user's Cancel) ends the prediction there.
    """
    t0 = time.perf_counter()
    report = progress or _no_progress
    template, mean, spacing, scale = model_arrays(model)
    prep = prepare_scan(mesh, template, mean, spacing, units, template_modes(template), progress)
    t1 = time.perf_counter()
    swap, start, init = network_start(prep, model, mean)
    steps = refine_steps if refine_steps is not None else int(model.metadata.get("refine_steps", 1))
    report("network", 0.6)
    vertex_tree = cKDTree(prep.clean.vertices)  # one search tree for the missing landmarks and both snaps
    inside = inside_template(template, mean)  # the landmarks the face template covers well
    missing = missing_landmarks(prep, start, inside, vertex_tree, model.metadata["protocol"]["labels"])
    centres, spread = network_answer(prep.tree, model, init, steps, scale, confidence_samples, missing)
    labels = list(model.metadata["protocol"]["labels"])
    earless, flat_sides = flat_ears(prep, labels, centres, missing, vertex_tree, inside)
    if earless.any():  # read the face again without them, as for any landmark the scan lacks
        missing = missing | earless
        centres, spread = network_answer(prep.tree, model, init, steps, scale, confidence_samples, missing)
    if samplings > 1:
        answers, spreads = [centres], [spread]
        for seed in range(1, int(samplings)):
            tree = sampled_again(prep, mean, spacing, seed)
            more = network_answer(tree, model, initial_approximation(tree, start), steps, scale, confidence_samples,
                                  missing)
            answers.append(more[0])
            spreads.append(more[1])
        centres, spread = np.mean(answers, axis=0), np.mean(spreads, axis=0)
    status, message = scan_status(prep.alignment, mesh.n_vertices)
    registration = LazyRegistration(prep, template, mean, swap, report)
    centres, sources = arbitrate_with_registration(prep, model, centres, spread, status, template, mean, report,
                                                   registration)
    moved = describe_sources(labels, sources)
    fill = order_fill(model, missing)
    centres, stand_ins, found = keep_anatomical_order(labels, centres, missing, registration, fill)
    t2 = time.perf_counter()
    report("snapping", 0.9)

    pts, stand_ins, found, still = snap_in_order(prep, labels, centres, missing, snap, vertex_tree, registration,
                                                 stand_ins, found, fill)
    taken = np.array([bool(x) for x in stand_ins], dtype=bool)
    sources = [x or src for x, src in zip(stand_ins, sources)]
    broke, after = out_of_order_labels(found), out_of_order_labels(still)
    disordered = list(dict.fromkeys(broke + after))
    conf = landmark_confidence(spread, model)
    conf = np.where(missing, 0.0, conf)
    doubtful = np.isin(labels, disordered) | taken  # broke the order, or a stand-in
    conf = np.where(doubtful, np.minimum(conf, OUT_OF_ORDER_CONFIDENCE), conf)
    gone = tuple(lab for lab, m in zip(labels, missing) if m)
    if gone:
        no_surface = [lab for lab, m, e in zip(labels, missing, earless) if m and not e]
        note = "{} of {} landmarks missing".format(len(gone), len(labels))
        if no_surface:
            note += ": no scanned surface where the face puts {} (a cut or a hole?)".format(", ".join(no_surface))
        if status == OK:
            status = PARTIAL
        message = "; ".join(m for m in (message, note, describe_flat_ears(labels, earless, flat_sides)) if m)
    if prep.alignment.scale != 1.0:
        message = "; ".join(m for m in (message, sized_note(prep.alignment.scale)) if m)
    if status == NOT_A_FACE and units == "auto":  # a face far smaller or larger in the units its size suggests
        message += "; its units were taken for {} from its size: if they are others, give them".format(prep.units)
    replaced = [lab for lab, x in zip(labels, stand_ins) if x == REGISTRATION]
    from_others = [lab for lab, x in zip(labels, stand_ins) if x == OTHERS]
    order = (describe_out_of_order(found, replaced, from_others=from_others) if taken.any() else "",
             describe_out_of_order(still))
    message = "; ".join(m for m in (message, moved) + order if m)
    names = _landmark_names(model)
    descriptions = [describe(names.get(lab, lab) + ("" if src == NETWORK else "; from " + SOURCE_TEXT[src]) +
                             (", the network's answer out of anatomical order" if t and lab in broke else "") +
                             ("; out of anatomical order" if lab in after else ""), c)
                    for lab, c, src, t in zip(labels, conf, sources, taken)]
    t3 = time.perf_counter()
    report("done", 1.0)
    return Prediction(Landmarks(labels, pts, conf, descriptions, prep.units), status, prep.units, prep.alignment,
                      t3 - t0, {"prepare": t1 - t0, "network": t2 - t1, "snap": t3 - t2}, spread, message,
                      prep.spikes, prep.fragments, gone, tuple(sources), tuple(disordered))


def snap_in_order(prep: PreparedScan, labels: Sequence[str], centres: np.ndarray, missing: np.ndarray, snap: str,
                  vertex_tree: cKDTree, registration: Callable[[], np.ndarray], stand_ins: Sequence[str],
                  found, fill: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None):
    """The answer ``centres`` (canonical mm) in the scan's frame and units, snapped (NaN where
    missing), still in anatomical order: on a coarse scan snapping moves a point by a few mm,
    so the snapped answer is checked again and repaired as :func:`keep_anatomical_order` does,
    the stand-ins snapped alike. Returns (points, each landmark's stand-in (``stand_ins`` and
    these), the pairs broken before or by snapping (``found`` and these), the pairs still broken)."""
    to_file = unit_scale("mm", prep.units)

    def snapped(canonical: np.ndarray) -> np.ndarray:
        at = prep.alignment.to_scan(canonical) * to_file
        known = ~missing & np.isfinite(at).all(axis=1)  # a registration that failed places nothing
        if snap != "none" and known.any():
            onto = snapping_mesh(prep, at[known], snap, vertex_tree)
            at[known] = snap_to_surface(onto, at[known], snap, tree=vertex_tree if onto is prep.clean else None)
        return np.where(known[:, None], at, np.nan)

    def canonical(points: np.ndarray) -> np.ndarray:
        return prep.alignment.to_canonical(points / to_file)

    pts = snapped(centres)
    still = out_of_order(labels, canonical(pts))
    stand_ins = list(stand_ins)
    if still and snap != "none":
        now = canonical(pts)
        more, by, trial = np.zeros(len(labels), dtype=bool), "", pts
        if fill is not None:  # the prior's places, kept when they are in order once snapped
            repaired, taken = restore_order(labels, now, lambda mask: fill(now, mask), most=MOST_FILLED)
            if taken.any():
                trial = np.where(taken[:, None], snapped(np.where(taken[:, None], repaired, np.nan)), pts)
                if not out_of_order(labels, canonical(trial)):
                    more, by = taken, OTHERS
        if not more.any():  # the registration's answer, snapped alike
            reg = snapped(registration())
            _, more = restore_order(labels, now, canonical(reg))
            by, trial = REGISTRATION, np.where(more[:, None], reg, pts)
        if more.any():
            pts = trial
            stand_ins = [by if m else x for m, x in zip(more, stand_ins)]
            seen = {(o.upper, o.lower) for o in found}  # a pair broken before snapping is named once
            found = sorted(list(found) + [o for o in still if (o.upper, o.lower) not in seen], key=lambda o: -o.by_mm)
            still = out_of_order(labels, canonical(pts))
    return pts, stand_ins, found, still


# The shape prior places a few landmarks from the others; an answer out of order in more places
# than this (a face misread as a whole) is left to the registration.
MOST_FILLED = 6


def order_fill(model: Model, missing: np.ndarray) -> Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """``fill(points, mask)``: where the model's shape prior (the second round's, which shaped the
    answer) puts the landmarks of ``mask`` given the others of ``points`` (canonical mm; the
    scan's ``missing`` landmarks left out too); None for a model without a prior."""
    rounds = second_round(model)
    prior = rounds[1] if rounds else shape_prior(model)
    if prior is None:
        return None
    swap = model_swap(model)

    def fill(points: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return apply_shape_prior(np.where(missing[:, None], 0.0, points), prior, swap, np.asarray(mask) | missing)

    return fill


def keep_anatomical_order(labels: Sequence[str], centres: np.ndarray, missing: np.ndarray,
                          registration: Callable[[], np.ndarray],
                          fill: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None):
    """(answer, each landmark's stand-in: "" or its source, the pairs the answer broke).

    Where the answer (canonical mm) breaks the anatomical order (:mod:`palnet.anatomy`; on real
    scans the network once put the upper lip's point on the lower lip), the fewest of the
    landmarks involved that restore it are placed where the rest of the face puts them (``fill``,
    :func:`order_fill`: the shape prior; source ``"others"``), those farthest from there first;
    when that cannot restore it, or the model has no prior, the template registration's answer
    stands in likewise (source ``"registration"``; it runs only then). Otherwise the answer stays
    and the pairs are reported (:func:`palnet.anatomy.restore_order`). Missing landmarks take no
    part."""
    stand_ins = [""] * len(labels)
    shown = np.where(missing[:, None], np.nan, centres)
    found = out_of_order(labels, shown)
    if found:
        taken, by = np.zeros(len(labels), dtype=bool), OTHERS
        if fill is not None:
            repaired, taken = restore_order(labels, shown, lambda mask: fill(centres, mask), most=MOST_FILLED)
        if not taken.any():
            repaired, taken = restore_order(labels, shown, registration())
            by = REGISTRATION
        centres = np.where(taken[:, None], repaired, centres)
        stand_ins = [by if t else "" for t in taken]
    return centres, stand_ins, found


def symmetric_registration(samples: np.ndarray, template: np.ndarray, mean: np.ndarray,
                           swap: Optional[np.ndarray]) -> np.ndarray:
    """The template registration's landmarks (canonical mm), the same for a face and its mirror
    image: the mean of the registration onto ``samples`` and the mirror image of the one onto
    their mirror image. The template and CPD's thinning of the samples are not symmetric, so the
    two differ; without mirror pairs (``swap``) the registration onto ``samples`` alone. The samples
    are taken in the order of their coordinates: CPD's thinning draws from them by position in the
    list, and a scan's mirror image (or the same scan, saved otherwise) may list them otherwise."""
    samples = np.asarray(samples, dtype=np.float64)
    ordered = samples[np.lexsort(samples.T[::-1])]
    reg = register_template(ordered, template, mean)
    if swap is None:
        return reg
    flipped = samples * FLIP
    return 0.5 * (reg + mirror_landmarks(register_template(flipped[np.lexsort(flipped.T[::-1])], template, mean), swap))


class LazyRegistration:
    """The scan's :func:`symmetric_registration`, computed on the first call only (about a
    second: most scans never need it). A registration that fails, or places a landmark nowhere
    (NaN), stands in for nothing: its answer is NaN there, and the network's answer stays."""

    def __init__(self, prep: PreparedScan, template: np.ndarray, mean: np.ndarray, swap: Optional[np.ndarray],
                 progress: Optional[Progress] = None):
        self._args = (prep.samples, template, mean, swap)
        self._progress = progress or _no_progress
        self._answer = None

    def __call__(self) -> np.ndarray:
        if self._answer is None:
            self._progress("registration", 0.8)
            mean = self._args[2]
            try:
                with np.errstate(all="ignore"):
                    answer = symmetric_registration(*self._args)
            except (PalnetError, np.linalg.LinAlgError, ValueError, FloatingPointError):
                answer = np.full(np.shape(mean), np.nan)
            self._answer = np.where(np.isfinite(answer).all(axis=1)[:, None], answer, np.nan)
        return self._answer


def arbitrate_with_registration(prep: PreparedScan, model: Model, centres: np.ndarray, spread: np.ndarray,
                                status: str, template: np.ndarray, mean: np.ndarray,
                                progress: Optional[Progress] = None,
                                registration: Optional[LazyRegistration] = None) -> Tuple[np.ndarray, List[str]]:
    """The answer after the model's arbitration rule (see :mod:`palnet.arbitrate`), canonical mm,
    and each landmark's source; the network's answer as it is when the model has no rule or the
    rule does not call for the registration."""
    rule = rule_from(model.metadata, len(centres), model.source)
    if rule is None or not triggered(rule, spread, status):
        return centres, [NETWORK] * len(centres)
    registration = registration or LazyRegistration(prep, template, mean, symmetric_swap(mean, model_swap(model)),
                                                    progress)
    return combine(rule, centres, registration())


def missing_landmarks(prep: PreparedScan, expected: np.ndarray, inside: np.ndarray,
                      vertex_tree: Optional[cKDTree] = None, labels: Optional[Sequence[str]] = None) -> np.ndarray:
    """Mask of the landmarks the scan lacks, where the fitted face (the aligner's shape-fitted
    start ``expected``, canonical mm) puts them and the scan's border is the nearest surface:

    - no surface near that spot (MISSING_SURFACE_MM; MISSING_OUTSIDE_MM for the landmarks the
      template covers thinly, but for the gonions, FIRM_EDGE_NAMES): it looks into a hole or
      past a cut;
    - or the spot lies past the scan's edge, along the surface, by more than
      MISSING_PAST_EDGE_MM (MISSING_PAST_EDGE_THIN_MM likewise): a landmark past the cut of a
      face-only capture;
    - an ear (``labels``: t, sa, sba, pa, obs of one side) whose top or back lies far past the
      edge (MISSING_PAST_EDGE_THIN_MM) is not on the scan at all: each of its points lying past
      the edge by more than EAR_PAST_EDGE_MM is missing too (the cut in front of the ears); and
      when both its top and its back lie that far past the edge, so is each of its points whose
      nearest surface is the scan's border (a tragion or an ear's base would sit on the cut).

    The network always answers on some surface, so without this a landmark over a hole lands on
    the hole's rim, and an ear the scan does not have on the cut, as confidently as any other.
    ``inside``: the landmarks the face template covers well (inside_template); ``vertex_tree``: a
    search tree of ``prep.clean``'s vertices, when one is built already."""
    limit = np.where(inside, MISSING_SURFACE_MM, MISSING_OUTSIDE_MM)
    firm = inside | (np.array([lab.rsplit("_", 1)[0] in FIRM_EDGE_NAMES for lab in labels], dtype=bool)
                     if labels is not None else False)
    edge_limit = np.where(firm, MISSING_SURFACE_MM, MISSING_OUTSIDE_MM)  # with the border nearest
    past_limit = np.where(firm, MISSING_PAST_EDGE_MM, MISSING_PAST_EDGE_THIN_MM)
    gap = prep.tree.query(expected)[0]
    far = gap > limit
    if not prep.clean.n_triangles or not (gap > past_limit).any():
        return far
    # Only now is the border needed (a sort of the scan's edges, unless cleanup kept it). The
    # scan's own vertices are searched in its own frame and units.
    verts, tri = prep.clean.vertices, prep.clean.triangles
    proper = (tri[:, 0] != tri[:, 1]) & (tri[:, 1] != tri[:, 2]) & (tri[:, 0] != tri[:, 2])
    if proper.sum() < 0.5 * len(tri):  # mostly collapsed triangles: a point cloud, without a border to trust
        return far
    if proper.all():
        border = prep.border if prep.border is not None else edges_and_border(tri, len(verts))[1]
    else:
        tri = tri[proper]
        border = edges_and_border(tri, len(verts))[1]
    if not border.any():
        return np.zeros_like(far)
    to_mm = unit_scale(prep.units, "mm")
    spot = prep.alignment.to_scan(expected) / to_mm
    to_mm /= prep.alignment.scale  # the limits are canonical mm
    vertex_gap, nearest = (vertex_tree or cKDTree(verts)).query(spot)
    to_border = cKDTree(verts[border]).query(spot)[0]
    on_border = (to_border - vertex_gap) * to_mm < MISSING_BORDER_MM
    # How far past the edge: the offset from the nearest border vertex, less its part along the
    # surface normal there (a spot floating over the surface is not past its edge).
    candidates = np.flatnonzero(on_border & (gap > EAR_PAST_EDGE_MM))
    past = np.zeros(len(far))
    if candidates.size:
        normals = vertex_normals(np.asarray(verts, np.float64), tri)[nearest[candidates]]
        offset = (spot[candidates] - verts[nearest[candidates]]) * to_mm
        along = offset - (offset * normals).sum(axis=1, keepdims=True) * normals
        past[candidates] = np.linalg.norm(along, axis=1)
    gone = ((gap > edge_limit) & on_border) | (past > past_limit)
    for side in ("R", "L") if labels is not None else ():
        index = {lab: i for i, lab in enumerate(labels)}
        ear = [index[name + "_" + side] for name in EAR_NAMES if name + "_" + side in index]
        anchors = [index[name + "_" + side] for name in EAR_ANCHORS if name + "_" + side in index]
        if anchors and max(past[a] for a in anchors) > MISSING_PAST_EDGE_THIN_MM:
            gone[ear] |= past[ear] > EAR_PAST_EDGE_MM
            if min(past[a] for a in anchors) > MISSING_PAST_EDGE_THIN_MM:  # top and back: none of it is here
                gone[ear] |= on_border[ear]
    return gone


def inside_template(template: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Mask of the landmarks (at their ``mean`` places) that the face template covers well."""
    near = cKDTree(template).query_ball_point(mean, TEMPLATE_SUPPORT_MM)
    return np.array([len(n) >= TEMPLATE_SUPPORT_POINTS for n in near], dtype=bool)


def flat_ears(prep: PreparedScan, labels: Sequence[str], centres: np.ndarray, missing: np.ndarray,
              vertex_tree: cKDTree, inside: np.ndarray) -> Tuple[np.ndarray, List[str]]:
    """The ear points of a side where the scan shows no ear (palnet.auricle), from the answer
    ``centres`` (canonical mm), judged on the cleaned scan in its own frame: (mask, sides). Only
    points the face template does not cover (``inside``, see inside_template) are judged (the
    template has no ears: a model whose ear labels lie on its face template names other points by
    them)."""
    to_file = unit_scale("mm", prep.units)
    at = prep.alignment.to_scan(centres) * to_file
    radius = AURICLE_RADIUS_MM * prep.alignment.scale * to_file
    return ears_not_made_out(labels, at, inside, prep.clean.vertices, prep.clean.triangles, vertex_tree, radius,
                             missing)


def _small_rotations(rng: np.random.Generator, n: int, degrees: float) -> np.ndarray:
    from scipy.spatial.transform import Rotation
    if n == 0:
        return np.zeros((0, 3, 3))
    return Rotation.from_rotvec(rng.normal(size=(n, 3)) * np.radians(degrees) / np.sqrt(3)).as_matrix()


def _landmark_names(model: Model) -> dict:
    return {d.get("label"): d.get("name") or d.get("label")
            for d in model.metadata.get("protocol", {}).get("landmarks", []) if isinstance(d, dict)}
