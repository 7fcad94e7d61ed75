"""predict(mesh, model) -> landmarks: align -> roi -> patches -> network -> back -> snap.

Everything here is NumPy/SciPy: the network runs through :mod:`palnet.engine`,
never through torch, so the Slicer module and the command line work without it.
"""
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy.spatial import cKDTree

from .align import Alignment, align_scan, detect_units
from .errors import PalnetError
from .modelfile import Model
from .patches import extract_patches, initial_approximation, roi_samples
from .snap import snap_to_surface
from .types import Landmarks, Mesh, unit_scale

# Above this trimmed template-to-scan RMS the face fit is doubtful; well above, it is no face.
LOW_FIT_RMS_MM = 5.0
NOT_A_FACE_RMS_MM = 6.5


@dataclass
class Prediction:
    """Landmarks in the scan's own frame and units, with how the scan was read."""

    landmarks: Landmarks
    status: str  # "ok", "low fit" or "not a face"
    units: str
    alignment: Alignment
    seconds: float
    initial: Optional[Landmarks] = None  # the mean shape after alignment, snapped (a baseline)
    timings: dict = field(default_factory=dict)

    @property
    def fit_rms_mm(self) -> float:
        return self.alignment.rms_mm


@dataclass
class PreparedScan:
    """A scan in the model's canonical frame, ready for patch extraction."""

    units: str
    alignment: Alignment
    samples: np.ndarray  # even surface samples of the region of interest, canonical mm
    tree: cKDTree


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


def prepare_scan(mesh: Mesh, template: np.ndarray, mean_landmarks: np.ndarray, spacing: float,
                 units: str = "auto") -> PreparedScan:
    """Units to mm, automatic alignment, region of interest and even sampling."""
    if mesh.n_vertices < 3:
        raise PalnetError("the scan has {} vertices: nothing to place landmarks on".format(mesh.n_vertices),
                          mesh.source)
    if not np.isfinite(mesh.vertices).all():
        raise PalnetError("the scan has NaN or infinite coordinates", mesh.source)
    units = detect_units(mesh.vertices) if units == "auto" else units
    mm = Mesh(mesh.vertices * unit_scale(units, "mm"), mesh.triangles, "mm", mesh.source)
    alignment = align_scan(mm.vertices, template)
    canonical = Mesh(alignment.to_canonical(mm.vertices), mm.triangles, "mm", mesh.source)
    samples = roi_samples(canonical, mean_landmarks, spacing)
    if len(samples) < 10:
        raise PalnetError("no surface near the face after alignment", mesh.source)
    return PreparedScan(units, alignment, samples, cKDTree(samples))


def predict(mesh: Mesh, model: Model, snap: str = "nearest", units: str = "auto",
            refine_steps: Optional[int] = None) -> Prediction:
    """Place the model's landmarks on ``mesh`` (any pose, units mm/cm/m or "auto")."""
    t0 = time.perf_counter()
    template, mean, spacing, scale = model_arrays(model)
    prep = prepare_scan(mesh, template, mean, spacing, units)
    t1 = time.perf_counter()
    init = initial_approximation(prep.tree, mean)
    centres = init
    steps = refine_steps if refine_steps is not None else int(model.metadata.get("refine_steps", 1))
    for _ in range(max(1, steps)):
        patches, centres = extract_patches(prep.tree, centres, model.config.patch_size, scale)
        centres = centres + model.forward(patches).astype(np.float64) * scale
    t2 = time.perf_counter()

    to_file = unit_scale("mm", prep.units)
    pts = prep.alignment.to_scan(centres) * to_file
    pts = snap_to_surface(mesh, pts, snap) if snap != "none" else pts
    labels = list(model.metadata["protocol"]["labels"])
    rms = prep.alignment.rms_mm
    status = "ok" if rms <= LOW_FIT_RMS_MM else ("low fit" if rms <= NOT_A_FACE_RMS_MM else "not a face")
    initial = Landmarks(labels, snap_to_surface(mesh, prep.alignment.to_scan(init) * to_file, "nearest"),
                        units=prep.units)
    t3 = time.perf_counter()
    return Prediction(Landmarks(labels, pts, units=prep.units), status, prep.units, prep.alignment, t3 - t0,
                      initial, {"prepare": t1 - t0, "network": t2 - t1, "snap": t3 - t2})
