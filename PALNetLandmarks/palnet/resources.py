"""Where the shipped files (protocol, default model, sample scan) live.

From a source checkout and inside 3D Slicer they are in the module's
``Resources`` folder next to this package; a wheel built with ``pip install .``
carries the same folder as ``palnet/_resources``.
"""
import os
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def resources_dir() -> Path:
    for candidate in (_HERE / "_resources", _HERE.parent / "Resources"):
        if candidate.is_dir():
            return candidate
    return _HERE.parent / "Resources"


def default_protocol_path() -> Path:
    return resources_dir() / "Protocols" / "palnet50.json"


def default_model_path() -> Path:
    return resources_dir() / "Models" / "palnet_default.npz"


def face_template_path() -> Path:
    """Canonical face surface points used to align scans when training without a model."""
    return resources_dir() / "Models" / "face_template.npz"


def sample_scan_path() -> Path:
    return resources_dir() / "Samples" / "sample_face.ply"


def sample_landmarks_path() -> Path:
    return resources_dir() / "Samples" / "sample_face.mrk.json"


def default_ict_path() -> Path:
    """The ICT-FaceKit model: $PALNET_ICT, else ``../shared/data/ict-facekit`` beside the checkout."""
    env = os.environ.get("PALNET_ICT")
    if env:
        return Path(env)
    for base in (Path.cwd(), _HERE.parent.parent):
        p = base.parent / "shared" / "data" / "ict-facekit" / "ict_facekit.npz"
        if p.exists():
            return p
    return Path.cwd().parent / "shared" / "data" / "ict-facekit" / "ict_facekit.npz"
