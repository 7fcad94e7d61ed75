"""The PALNet model file: one ``.npz`` read with ``allow_pickle=False``, so it can never run code.

Entries:
  ``metadata``  a 0-d unicode array holding one JSON object: ``format`` ("palnet-model"),
                ``format_version``, ``network`` (NetworkConfig.to_dict()), and whatever the
                trainer records (protocol, mean landmarks, patch normalisation, units, accuracy...).
  ``w/<name>``  every weight under its state-dict name (float32, or float16 with ``half``).
The file is uncompressed so loading is one read; float16 halves it with no visible accuracy cost.
"""
import json
import os
import uuid
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Union

import numpy as np

from . import engine
from .engine import NetworkConfig, check_weights
from .errors import PalnetError

FORMAT = "palnet-model"
FORMAT_VERSION = 1
WEIGHT_PREFIX = "w/"
METADATA_KEY = "metadata"
PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class Model:
    """A trained network: weights (float32), its configuration, and what it was trained for."""

    weights: Dict[str, np.ndarray]
    config: NetworkConfig
    metadata: Dict[str, Any] = field(default_factory=dict)
    source: Optional[str] = None  # file it was read from, for messages

    def __post_init__(self):
        # Cast once here so every forward pass runs on float32 without copying.
        self.weights = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.weights.items()}
        self.metadata = dict(self.metadata)
        self.metadata.setdefault("format", FORMAT)
        self.metadata.setdefault("format_version", FORMAT_VERSION)

    def forward(self, patches: np.ndarray) -> np.ndarray:
        return engine.forward(self.weights, self.config, patches)


def _json_default(value: Any) -> Any:
    # Let trainers put NumPy arrays/scalars in metadata; they come back as lists/numbers.
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError("{} is not JSON serialisable".format(type(value).__name__))


def save_model(path: PathLike, model: Model, half: bool = False) -> None:
    """Write ``model`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = os.fspath(path)
    check_weights(model.weights, model.config, path)  # never write a file load_model would refuse
    meta = dict(model.metadata, format=FORMAT, format_version=FORMAT_VERSION, network=model.config.to_dict())
    try:
        text = json.dumps(meta, default=_json_default)
    except (TypeError, ValueError) as e:
        raise PalnetError("metadata cannot be stored as JSON: {}".format(e), path) from None
    arrays = {METADATA_KEY: np.array(text)}
    limit = float(np.finfo(np.float16).max)
    for name, value in model.weights.items():
        if half and np.abs(value).max(initial=0.0) > limit:
            raise PalnetError("weight {} exceeds the float16 range; save without half".format(name), path)
        arrays[WEIGHT_PREFIX + name] = np.asarray(value, dtype=np.float16 if half else np.float32)
    # open(..., "x") rather than mkstemp: the file gets the user's umask, not mode 0600.
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                       ".{}.{}.tmp".format(os.path.basename(path), uuid.uuid4().hex[:8]))
    try:
        with open(tmp, "xb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError as e:
        raise PalnetError("cannot write model file: {}".format(e.strerror or e), path) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _entry(npz: Any, name: str, path: str) -> np.ndarray:
    try:
        value = npz[name]
    except ValueError as e:
        if "pickle" in str(e).lower():  # numpy: "Object arrays cannot be loaded when allow_pickle=False"
            raise PalnetError("entry {} is a pickled Python object; refused because loading it could run code"
                              .format(name), path) from None
        raise PalnetError("entry {} is damaged: {}".format(name, e), path) from None
    if not isinstance(value, np.ndarray):  # a zip member that is not a .npy array
        raise PalnetError("entry {} is not a NumPy array".format(name), path)
    return value


def _read_metadata(npz: Any, path: str) -> Dict[str, Any]:
    if METADATA_KEY not in npz.files:
        raise PalnetError("no metadata entry: not a PALNet model file", path)
    raw = _entry(npz, METADATA_KEY, path)
    if raw.shape != () or raw.dtype.kind != "U":
        raise PalnetError("metadata entry is not a JSON text", path)
    try:
        meta = json.loads(str(raw))
    except ValueError as e:
        raise PalnetError("metadata is not valid JSON ({})".format(e), path) from None
    if not isinstance(meta, dict):
        raise PalnetError("metadata is not a JSON object", path)
    if meta.get("format") != FORMAT:
        raise PalnetError("not a PALNet model file (format {!r}, expected {!r})".format(meta.get("format"), FORMAT), path)
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise PalnetError("invalid model format_version {!r}".format(version), path)
    if version > FORMAT_VERSION:
        raise PalnetError("model format version {} is newer than this palnet reads ({}); update palnet"
                          .format(version, FORMAT_VERSION), path)
    if "network" not in meta:
        raise PalnetError("metadata has no network configuration", path)
    return meta


def load_model(path: PathLike) -> Model:
    """Read and check a model file; every problem is one PalnetError line naming ``path``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise PalnetError("model file not found", path)
    if os.path.isdir(path):
        raise PalnetError("is a folder, not a model file", path)
    if not zipfile.is_zipfile(path):
        raise PalnetError("not a PALNet model file (not an .npz archive)", path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = _read_metadata(npz, path)
            config = NetworkConfig.from_dict(meta.pop("network"), path)
            weights = {}
            for name in npz.files:
                if name.startswith(WEIGHT_PREFIX):
                    value, key = _entry(npz, name, path), name[len(WEIGHT_PREFIX):]
                    if value.dtype.kind != "f":
                        raise PalnetError("weight {} is {}, not floating point".format(key, value.dtype), path)
                    weights[key] = value
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise PalnetError("damaged model file ({}: {})".format(type(e).__name__, e), path) from None
    check_weights(weights, config, path)
    model = Model(weights, config, meta, source=path)
    bad = [k for k, v in model.weights.items() if not np.isfinite(v).all()]
    if bad:
        raise PalnetError("weight(s) {} contain NaN or infinite values".format(", ".join(bad[:4])), path)
    return model
