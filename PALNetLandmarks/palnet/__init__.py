"""palnet: automatic anatomical landmarks on 3D face surface scans (PAL-Net).

Pure Python (NumPy, SciPy, VTK). torch is used only for training and is imported
lazily there; prediction never needs it.
"""
from .errors import PalnetError
from .types import Landmarks, Mesh

__version__ = "0.1.0"

__all__ = ["PalnetError", "Landmarks", "Mesh", "__version__"]
