"""Stand-ins for the parts of 3D Slicer that the slicer-core package lacks.

Only ``qt`` (PyQt5 under PythonQt's module name), ``slicer.ScriptedLoadableModule`` and
``slicer.parameterNodeWrapper`` are stubbed; with ``gui=True`` also ``ctk``, ``slicer.app``,
``slicer.modules`` and slicer.util's dialogs and .ui loading (see app.py and widgets.py).
Everything else the module uses (the MRML scene, nodes, storage, markups logic, the rest of
slicer.util) is the real slicer-core code. :func:`installed` puts the stubs in place for a
block of code and restores ``sys.modules`` and the ``slicer`` package afterwards, so nothing
leaks into other tests.
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


def _appModule():
    """app.py, loaded once per test run and kept (it holds the QApplication, which must outlive every widget)."""
    module = sys.modules.get("palnet_test_slicer_app")
    if module is None:
        module = sys.modules["palnet_test_slicer_app"] = _load("palnet_test_slicer_app", "app.py")
    return module


def application():
    """The offscreen QApplication of the test run; None without PyQt5."""
    try:
        import PyQt5  # noqa: F401
    except ImportError:
        return None
    return _appModule().application()


@contextlib.contextmanager
def installed(gui=False):
    """Install the stubs that are needed (a real module, e.g. inside Slicer, is left alone).

    With ``gui``, also the widget harness; yields its Dialogs recorder (else None).
    """
    import slicer
    names = list(_STUBS) + (["ctk", "palnet_ui_substitutes"] if gui else [])
    saved_modules = {name: sys.modules.get(name, _MISSING) for name in names}
    saved_attrs = {name: getattr(slicer, name.split(".")[1], _MISSING) for name in _STUBS if "." in name}
    saved_slicer = {name: getattr(slicer, name, _MISSING) for name in ("app", "modules")}
    saved_util = {}
    try:
        for name, filename in _STUBS.items():
            if name in sys.modules or _importable(name):
                continue
            module = _load(name, filename)
            sys.modules[name] = module
            if name.startswith("slicer."):
                setattr(slicer, name.split(".")[1], module)
        dialogs = None
        if gui:
            widgets = _load("palnet_ui_substitutes", "widgets.py")
            sys.modules["palnet_ui_substitutes"] = widgets
            sys.modules["ctk"] = widgets  # ctk.ctkPathLineEdit, ctk.ctkCollapsibleButton
            app = _appModule()
            app.application()
            slicer.app, slicer.modules = app.Application(), app.Modules()
            dialogs = app.Dialogs()
            patches = dict(dialogs.patches(), loadUI=app.loadUI, childWidgetVariables=app.childWidgetVariables)
            saved_util = {name: getattr(slicer.util, name) for name in patches}
            for name, value in patches.items():
                setattr(slicer.util, name, value)
        yield dialogs
    finally:
        for name, value in saved_util.items():
            setattr(slicer.util, name, value)
        for name, value in saved_slicer.items():
            if value is _MISSING:
                if hasattr(slicer, name):
                    delattr(slicer, name)
            else:
                setattr(slicer, name, value)
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
