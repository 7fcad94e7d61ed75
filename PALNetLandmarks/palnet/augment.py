"""Training-time augmentation: altered copies of an annotated scan.

A handful of annotated scans from one device show the network one resolution,
one extent and one kind of noise. Each copy made here changes what real scans
change: a coarser triangulation, a cut at a random plane (never closer than
``margin`` to a landmark), holes away from the landmarks, surface noise, spikes
and any pose. The copy then goes through the same spike removal, automatic
alignment and sampling as a scan at prediction time, so the network learns
from what the aligner hands it, residual alignment errors included.

Every copy is a pure function of the scan, the copy number and the settings.
"""
from typing import Tuple

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from .datatypes import Mesh
from .geometry import drop_unused, vertex_normals
from .mesh_io import mesh_to_polydata, polydata_to_mesh
from .synth import add_spikes

DEFAULT_AUGMENT = {
    "copies": 0,            # altered copies per training scan (0: none)
    "coarsen": 0.7,         # up to this fraction of the vertices decimated away (half the copies)
    "crop": 0.7,            # chance of a cut at a random plane
    "holes": 3,             # up to this many holes, 3-12 mm across, away from the landmarks
    "noise_mm": 0.3,        # up to this much noise along the surface normal
    "spikes": 0.01,         # up to this fraction of vertices turned into 3-30 mm spikes
    "any_pose": True,       # turn and move the copy anywhere (the aligner must find it)
}
LANDMARK_MARGIN_MM = 10.0  # no cut or hole comes closer than this to a landmark
COARSEST = 8000  # vertices: decimation stops here (a face needs a few thousand to show its detail)


def coarsen(mesh: Mesh, reduction: float) -> Mesh:
    """The same surface with ``reduction`` of its vertices taken out (VTK's topology-preserving
    decimation: no folds, holes or non-manifold edges are made), never below COARSEST vertices."""
    from vtkmodules.vtkFiltersCore import vtkDecimatePro
    reduction = min(float(reduction), 1.0 - COARSEST / max(mesh.n_vertices, 1))
    if reduction <= 0.01 or not mesh.n_triangles:
        return mesh
    f = vtkDecimatePro()
    f.SetInputData(mesh_to_polydata(mesh))
    f.SetTargetReduction(reduction)
    f.PreserveTopologyOn()
    f.Update()
    return polydata_to_mesh(f.GetOutput(), mesh.units, mesh.source)


def augment_scan(mesh_mm: Mesh, landmarks_mm: np.ndarray, rng: np.random.Generator,
                 settings: dict) -> Tuple[Mesh, np.ndarray]:
    """One altered copy of a scan in millimetres: (mesh, landmarks), both in the copy's pose."""
    s = dict(DEFAULT_AUGMENT, **settings)
    if s["coarsen"] > 0 and rng.random() < 0.5:
        mesh_mm = coarsen(mesh_mm, rng.uniform(0.3, 1.0) * s["coarsen"])
    v = np.asarray(mesh_mm.vertices, dtype=np.float64)
    t = np.asarray(mesh_mm.triangles, dtype=np.int64)
    lm = np.asarray(landmarks_mm, dtype=np.float64)
    keep = np.ones(len(v), bool)
    if rng.random() < s["crop"]:
        normal = Rotation.random(random_state=rng).apply([0.0, 0.0, 1.0])
        keep &= v @ normal <= (lm @ normal).max() + LANDMARK_MARGIN_MM + rng.uniform(0.0, 60.0)
    n_holes = int(rng.integers(0, int(s["holes"]) + 1)) if s["holes"] else 0
    if n_holes and len(v):
        far = np.flatnonzero(cKDTree(lm).query(v)[0] > LANDMARK_MARGIN_MM + 6.0)
        for centre in v[rng.choice(far, size=min(n_holes, len(far)), replace=False)] if len(far) else []:
            keep &= np.linalg.norm(v - centre, axis=1) > rng.uniform(1.5, 6.0)
    if len(t):
        v, t = drop_unused(v, t[keep[t].all(axis=1)])
    else:
        v = v[keep]
    if len(t) and s["noise_mm"] > 0:
        v = v + vertex_normals(v, t) * rng.normal(0.0, rng.uniform(0.0, s["noise_mm"]), (len(v), 1))
    if len(t) and s["spikes"] > 0:
        v, _ = add_spikes(v, t, rng.uniform(0.0, s["spikes"]), rng, lm)
    if s["any_pose"]:
        rot = Rotation.random(random_state=rng).as_matrix()
        shift = rng.uniform(-150.0, 150.0, 3)
        v, lm = v @ rot.T + shift, lm @ rot.T + shift
    return Mesh(v, t, "mm", mesh_mm.source), lm
