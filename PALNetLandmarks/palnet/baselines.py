"""Two baselines PAL-Net has to beat, both NumPy/SciPy only (no torch).

(a) ``initial_approximation_baseline``: the model's mean landmarks after the
    automatic alignment, each put on the scan's surface as predict puts its answer. This is the
    starting point the network refines, so the network must improve on it.
(b) ``template_registration_baseline``: template registration the way SlicerMorph's
    ALPACA does it: a rigid alignment, then Coherent Point Drift (Myronenko & Song,
    "Point Set Registration: Coherent Point Drift", IEEE TPAMI 32(12), 2010)
    deforming a template point set (the model's face template, or a mean face
    surface when one is given, plus the mean landmarks; canonical frame, mm) onto
    the scan's surface; the landmarks travel with the deformation and are snapped
    to the scan.

The registration itself (Coherent Point Drift) is in :mod:`palnet.registration`; its names are
re-exported here for code written against this module.
"""
from typing import Optional

import numpy as np
from scipy.spatial import cKDTree

from .align import Alignment
from .geometry import sample_surface
from .modelfile import Model
from .options import DEFAULT_SNAP, NO_SNAP
from .pipeline import model_arrays, prepare_scan, template_modes, to_canonical_frame
from .registration import (DEFAULT_SETTINGS, CPDResult, RegistrationSettings,  # noqa: F401  (re-exported)
                           affine_coherent_point_drift, coherent_point_drift, gaussian_kernel,  # noqa: F401
                           low_rank_eigen, register_template, squared_distances, subsample)  # noqa: F401
from .snap import snap_to_surface
from .synth import IctModel, load_ict
from .datatypes import Landmarks, Mesh, unit_scale

__all__ = ["DEFAULT_SETTINGS", "CPDResult", "RegistrationSettings", "affine_coherent_point_drift",
           "coherent_point_drift", "gaussian_kernel", "low_rank_eigen", "register_template", "squared_distances",
           "subsample", "initial_approximation_baseline", "template_registration_baseline", "ict_mean_face"]


def initial_approximation_baseline(mesh: Mesh, model: Model, units: str = "auto",
                                   alignment: Optional[Alignment] = None, snap: str = DEFAULT_SNAP) -> Landmarks:
    """Baseline (a): the mean landmarks after automatic alignment, snapped to the scan (``snap`` as
    in ``snap_to_surface``, or "none"), in the scan's frame and units. ``alignment`` (with ``units`` not "auto"): the pose a
    prediction of this scan already found (``Prediction.alignment`` and ``.units``), so that a
    benchmark does not align the scan twice; without it the scan is aligned as predict does."""
    template, mean, _, _ = model_arrays(model)
    if alignment is None or units == "auto":
        c = to_canonical_frame(mesh, template, units, template_modes(template))
        alignment, units = c.alignment, c.units
    pts = alignment.to_scan(mean) * unit_scale("mm", units)
    if snap != NO_SNAP:
        pts = snap_to_surface(mesh, pts, snap)
    return Landmarks(list(model.metadata["protocol"]["labels"]), pts, units=units)


def template_registration_baseline(mesh: Mesh, model: Model, units: str = "auto",
                                   mean_face: Optional[np.ndarray] = None, affine: Optional[bool] = None,
                                   settings: Optional[RegistrationSettings] = None,
                                   snap: str = DEFAULT_SNAP, seed: int = 0) -> Landmarks:
    """Baseline (b): rigid alignment, then CPD of a template and the mean landmarks onto the scan.

    The template is the model's face template (central face, no ears), or
    ``mean_face``: points of a mean face surface in the model's canonical frame (mm)
    covering the landmarks, ears included (see ``ict_mean_face``). ``affine`` (default:
    only with ``mean_face``) runs affine CPD before the non-rigid one; from the central
    face alone an affine map extrapolates badly to the ears. Returns the transferred
    landmarks snapped to the scan (``snap`` as in ``snap_to_surface``, or "none"),
    in the scan's frame and units.
    """
    template, mean, spacing, _ = model_arrays(model)
    prep = prepare_scan(mesh, template, mean, spacing, units, template_modes(template))  # as predict does
    moved = register_template(prep.samples, template, mean, mean_face, affine, settings, seed)
    pts = prep.alignment.to_scan(moved) * unit_scale("mm", prep.units)
    if snap != NO_SNAP:
        pts = snap_to_surface(mesh, pts, snap)
    return Landmarks(list(model.metadata["protocol"]["labels"]), pts, units=prep.units)


def ict_mean_face(mean_landmarks: np.ndarray, ict=None, margin: float = 20.0, spacing: float = 2.0) -> np.ndarray:
    """Even points (about ``spacing`` mm apart) of the neutral ICT-FaceKit head's skin within
    ``margin`` mm of the mean landmarks: a mean face with ears, in the canonical frame of
    models trained with the shipped face template (which is cut from the same head).

    ``ict``: a ``palnet.synth.IctModel``, a path to the ICT-FaceKit file, or None for
    the default location.
    """
    head = ict if isinstance(ict, IctModel) else load_ict(ict)
    skin = np.zeros(len(head.neutral), bool)
    skin[head.skin_vertices] = True
    tri = head.triangles[skin[head.triangles].all(axis=1)]
    pts = sample_surface(head.neutral.astype(np.float64), tri, spacing)
    near = cKDTree(np.asarray(mean_landmarks, dtype=np.float64)).query(pts, distance_upper_bound=margin)[0]
    return pts[np.isfinite(near)]
