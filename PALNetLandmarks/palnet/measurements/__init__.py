"""Measurements on landmarks: distances, projections, angles, indices, surface arcs, asymmetry.

``measure(landmarks)`` gives the shipped standard soft-tissue measurements of one face, each
with a standard error from its landmarks' confidence; ``measure_many`` does a cohort at once;
``asymmetry(landmarks)`` gives per-landmark asymmetry vectors, region and total indices;
``load_definitions(path)`` reads a user's own definitions (JSON, see docs/measurements.md).
Modules: ``definitions`` (the JSON), ``compute`` (values, SE, z), ``asymmetry``, ``surface``
(lengths along the scan), ``norms`` (z-score tables), ``files`` (landmark files in, CSV out).
"""
from .asymmetry import Asymmetry, asymmetry
from .compute import Measurement, face_frame, landmark_sd, measure, measure_many, sd_from_confidence
from .definitions import (KINDS, Definitions, MeasurementDefinition, default_definitions_path,
                          load_definitions)
from .norms import Norms, load_norms

__all__ = ["Asymmetry", "Definitions", "KINDS", "Measurement", "MeasurementDefinition", "Norms", "asymmetry",
           "default_definitions_path", "face_frame", "landmark_sd", "load_definitions", "load_norms", "measure",
           "measure_many", "sd_from_confidence"]
