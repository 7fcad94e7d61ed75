"""Stand-ins for the parts of 3D Slicer that the slicer-core package lacks.

Only ``qt``, ``slicer.ScriptedLoadableModule`` and ``slicer.parameterNodeWrapper`` are stubbed;
everything else the module uses (the MRML scene, nodes, storage, markups logic, slicer.util)
is the real slicer-core code. :func:`installed` puts the stubs in place for a block of code and
restores ``sys.modules`` and the ``slicer`` package afterwards, so nothing leaks into other tests.
"""
import contextlib
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_STUBS = {"qt": "qt.py", "slicer.ScriptedLoadableModule": "ScriptedLoadableModule.py",
          "slicer.parameterNodeWrapper": "parameterNodeWrapper.py"}
_MISSING = object()


def _load(name, filename):
    spec = importlib.util.spec_from_file_location(name, os.path.join(_HERE, filename))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _importable(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@contextlib.contextmanager
def installed():
    """Install the stubs that are needed (a real module, e.g. inside Slicer, is left alone)."""
    import slicer
    saved_modules = {name: sys.modules.get(name, _MISSING) for name in _STUBS}
    saved_attrs = {name: getattr(slicer, name.split(".")[1], _MISSING) for name in _STUBS if "." in name}
    try:
        for name, filename in _STUBS.items():
            if name in sys.modules or _importable(name):
                continue
            module = _load(name, filename)
            sys.modules[name] = module
            if name.startswith("slicer."):
                setattr(slicer, name.split(".")[1], module)
        yield
    finally:
        for name, module in saved_modules.items():
            if module is _MISSING:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for name, value in saved_attrs.items():
            attr = name.split(".")[1]
            if value is _MISSING:
                if hasattr(slicer, attr):
                    delattr(slicer, attr)
            else:
                setattr(slicer, attr, value)
