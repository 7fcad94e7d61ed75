"""The data types every part of palnet passes around: Mesh and Landmarks.

Coordinates are plain NumPy arrays in the frame of the file they came from.
Mesh files without a header are read by 3D Slicer as LPS, so inside palnet a
mesh's frame *is* its LPS frame; landmark files are written in that same frame
(and say so where the format can: ``coordinateSystem: LPS``).
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from .errors import PalnetError

from .options import UNITS_PER_MM  # noqa: E402  (re-exported)


def unit_scale(from_units: str, to_units: str) -> float:
    """Factor that converts a length in ``from_units`` into ``to_units``."""
    for u in (from_units, to_units):
        if u not in UNITS_PER_MM:
            raise PalnetError("unknown length unit {!r} (use mm, cm or m)".format(u))
    return UNITS_PER_MM[to_units] / UNITS_PER_MM[from_units]


@dataclass
class Mesh:
    """A triangle surface (or, with no triangles, a point cloud)."""

    vertices: np.ndarray  # (N, 3) float64
    triangles: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))  # (M, 3) int64
    units: str = "mm"
    source: Optional[str] = None  # file it was read from, for messages

    def __post_init__(self):
        self.vertices = np.ascontiguousarray(self.vertices, dtype=np.float64).reshape(-1, 3)
        self.triangles = np.ascontiguousarray(self.triangles, dtype=np.int64).reshape(-1, 3)

    @property
    def n_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def n_triangles(self) -> int:
        return int(self.triangles.shape[0])

    def in_units(self, units: str) -> "Mesh":
        """The same surface with coordinates converted to ``units``."""
        s = unit_scale(self.units, units)
        return Mesh(self.vertices * s, self.triangles.copy(), units, self.source)

    def transformed(self, matrix: np.ndarray) -> "Mesh":
        """The surface moved by a 4x4 homogeneous matrix (points as columns)."""
        m = np.asarray(matrix, dtype=np.float64)
        v = self.vertices @ m[:3, :3].T + m[:3, 3]
        return Mesh(v, self.triangles.copy(), self.units, self.source)


@dataclass
class Landmarks:
    """Named points, optionally with a confidence in [0, 1] and a description each."""

    labels: List[str]
    points: np.ndarray  # (L, 3) float64
    confidence: Optional[np.ndarray] = None  # (L,) float64
    descriptions: Optional[List[str]] = None
    units: str = "mm"

    def __post_init__(self):
        self.labels = [str(x) for x in self.labels]
        self.points = np.ascontiguousarray(self.points, dtype=np.float64).reshape(-1, 3)
        if len(self.labels) != self.points.shape[0]:
            raise ValueError("{} labels for {} points".format(len(self.labels), self.points.shape[0]))
        if self.confidence is not None:
            self.confidence = np.asarray(self.confidence, dtype=np.float64).reshape(-1)
        if self.descriptions is not None:
            self.descriptions = [str(x) for x in self.descriptions]

    def __len__(self) -> int:
        return len(self.labels)

    def as_dict(self) -> Dict[str, np.ndarray]:
        return {lab: self.points[i] for i, lab in enumerate(self.labels)}

    def select(self, labels: Sequence[str], source: Optional[str] = None) -> "Landmarks":
        """These landmarks reordered to ``labels``; a missing label is an error naming ``source``."""
        index = {lab: i for i, lab in enumerate(self.labels)}
        missing = [lab for lab in labels if lab not in index]
        if missing:
            raise PalnetError("missing landmark(s) {}".format(", ".join(missing)), source)
        idx = [index[lab] for lab in labels]
        return Landmarks(
            list(labels),
            self.points[idx],
            None if self.confidence is None else self.confidence[idx],
            None if self.descriptions is None else [self.descriptions[i] for i in idx],
            self.units,
        )

    def in_units(self, units: str) -> "Landmarks":
        s = unit_scale(self.units, units)
        return Landmarks(list(self.labels), self.points * s, self.confidence, self.descriptions, units)
