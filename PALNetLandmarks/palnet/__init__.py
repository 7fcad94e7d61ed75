"""palnet: automatic anatomical landmarks on 3D face surface scans (PAL-Net).

Pure Python (NumPy, SciPy, VTK). torch is used only for training and is imported
lazily there; prediction never needs it.

Importing the package imports nothing heavy: the command line sets how many threads
NumPy's BLAS may start before NumPy is first imported (see :mod:`palnet.cli`).
"""
from .errors import PalnetError

__version__ = "0.1.0"

__all__ = ["PalnetError", "Landmarks", "Mesh", "__version__"]


def __getattr__(name):  # PEP 562: the data types on first use, not at import
    if name in ("Landmarks", "Mesh"):
        from . import datatypes
        return getattr(datatypes, name)
    raise AttributeError("module 'palnet' has no attribute {!r}".format(name))
