"""The PALNet model file: one ``.npz`` read with ``allow_pickle=False``, so it can never run code.

Entries:
  ``metadata``  a 0-d unicode array holding one JSON object: ``format`` ("palnet-model"),
                ``format_version``, ``network`` (NetworkConfig.to_dict()), and whatever the
                trainer records (protocol, mean landmarks, patch normalisation, units, accuracy...).
  ``w/<name>``  every weight under its state-dict name (float32, or float16 with ``half``).
The file is uncompressed so loading is one read; float16 halves it with no visible accuracy cost.

A model file is input like any other: its sizes are checked before anything is read (the zip
entry's size and the shape its .npy header declares, against the network configuration), and
every metadata number the pipeline uses must lie in the range ``METADATA_RANGES`` gives
(docs/model_file.md), so a file can neither exhaust memory nor keep a prediction running.
"""
import json
import os
import uuid
import zipfile
import zlib
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

from . import engine
from .arbitrate import rule_from
from .engine import NetworkConfig, check_weights
from .errors import PalnetError

FORMAT = "palnet-model"
FORMAT_VERSION = 1
WEIGHT_PREFIX = "w/"
METADATA_KEY = "metadata"
PathLike = Union[str, "os.PathLike[str]"]

# Far above any model palnet trains (the default: 25 entries, 13 MB for the largest, 19.1 MB in
# all), far below what a bad file could otherwise make a reader allocate.
MAX_ENTRIES = 1000
MAX_ENTRY_BYTES = 512 * 2 ** 20
MAX_MODEL_BYTES = 1024 * 2 ** 20
MAX_METADATA_BYTES = 64 * 2 ** 20
_READ_CHUNK = 16 * 2 ** 20

# Ranges of the metadata numbers the pipeline uses: (low, high) inclusive. Integers: counts the
# pipeline loops over; mm: lengths in the canonical frame; the network's sizes bound its cost.
METADATA_RANGES = {
    "network.n_landmarks": (1, 500),
    "network.patch_size": (1, 2048),
    "network.widths": (1, 1024),  # each; at most 8 blocks
    "network.pools": (1, 2048),  # each
    "network.fc": (1, 8192),
    "network.in_channels": (3, 3),  # patches carry x, y, z
    "refine_steps": (1, 10),
    "second_round.refine_steps": (1, 10),
    "arbitration.trigger_spread_mm": (0.0, 100.0),  # mm; see palnet.arbitrate
    "arbitration.onset_mm": (1e-3, 1000.0),  # mm, or null: never
    "patch.spacing_mm": (0.25, 10.0),
    "patch.scale_mm": (1.0, 100.0),
    "template": (-1000.0, 1000.0),  # mm; 3 to 100000 points
    "mean_landmarks": (-1000.0, 1000.0),  # mm
    "landmark_modes.coef_mean": (-1000.0, 1000.0),  # at most 100 coefficients
    "landmark_modes.landmark_mean": (-1000.0, 1000.0),  # mm
    "landmark_modes.modes": (-1000.0, 1000.0),  # mm per unit of a coefficient
    "shape_prior.mean": (-1000.0, 1000.0),  # mm; also in second_round.shape_prior
    "shape_prior.bias": (-1000.0, 1000.0),  # mm
    "shape_prior.gain": (-100.0, 100.0),
    "prior_choice.shape_prior.covariance": (-1e6, 1e6),  # mm^2
    "prior_choice.threshold": (0.0, 1e6),  # squared distance per coordinate; see palnet.priors.choice_weight
    "prior_choice.width": (1e-6, 1e6),
    "confidence.spread_mm": (0.0, 1000.0),  # non-decreasing, 1 to 1000 entries
    "confidence.p_within_2mm": (0.0, 1.0),
}
MAX_BLOCKS = 8
MAX_TEMPLATE_POINTS = 100_000
MAX_MODES = 100
MAX_CONFIDENCE_ROWS = 1000


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
    stored = json.loads(text)  # checked as load_model will read it
    check_network_sizes(stored["network"], path)
    check_metadata(stored, model.config.n_landmarks, path)
    arrays = {METADATA_KEY: np.array(text)}
    limit = float(np.finfo(np.float16).max)
    for name, value in model.weights.items():
        if half and np.abs(value).max(initial=0.0) > limit:
            raise PalnetError("weight {} exceeds the float16 range; save without half".format(name), path)
        arrays[WEIGHT_PREFIX + name] = np.asarray(value, dtype=np.float16 if half else np.float32)
    for name, value in arrays.items():
        limit = MAX_METADATA_BYTES if name == METADATA_KEY else MAX_ENTRY_BYTES
        if value.nbytes > limit:
            raise PalnetError("entry {} would hold {} bytes, more than a model entry may ({})".format(
                name, value.nbytes, limit), path)
    if sum(value.nbytes for value in arrays.values()) > MAX_MODEL_BYTES:
        raise PalnetError("the model would hold more than {} bytes".format(MAX_MODEL_BYTES), path)
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


def _refuse(field_name: str, what: str, value: Any, path: str) -> PalnetError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return PalnetError("metadata field {} must be {}, not {}".format(field_name, what, shown), path)


def _int_in(value: Any, field_name: str, path: str) -> int:
    lo, hi = METADATA_RANGES[field_name]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise _refuse(field_name, str(lo) if lo == hi else "an integer from {} to {}".format(lo, hi), value, path)
    return int(value)


def _number_in(value: Any, field_name: str, path: str) -> float:
    lo, hi = METADATA_RANGES[field_name]
    # NaN and infinity fail the comparison too.
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not lo <= value <= hi:
        raise _refuse(field_name, "a number from {:g} to {:g}".format(lo, hi), value, path)
    return float(value)


def _array_in(value: Any, field_name: str, shape: Tuple, path: str, ranges_key: Optional[str] = None) -> np.ndarray:
    """``value`` as a float array of ``shape`` (None: any length) with every entry in range."""
    lo, hi = METADATA_RANGES[ranges_key or field_name]
    wanted = "a list of numbers of shape ({})".format(", ".join("N" if n is None else str(n) for n in shape))
    if isinstance(value, (str, bytes, dict)) or isinstance(value, bool):
        raise _refuse(field_name, wanted, value, path)
    try:
        with np.errstate(all="ignore"):
            a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError, RecursionError):
        raise _refuse(field_name, wanted, value, path) from None
    if a.ndim != len(shape) or any(n is not None and n != m for n, m in zip(shape, a.shape)):
        raise PalnetError("metadata field {} must be {}, not of shape {}".format(
            field_name, wanted, a.shape), path)
    if not np.isfinite(a).all():
        raise PalnetError("metadata field {} holds NaN or infinite values".format(field_name), path)
    if a.size and (a.min() < lo or a.max() > hi):
        worst = a.min() if a.min() < lo else a.max()
        raise PalnetError("metadata field {} must hold numbers from {:g} to {:g}, not {:g}".format(
            field_name, lo, hi, worst), path)
    return a


def _object(meta: Dict[str, Any], key: str, field_name: str, path: str) -> Optional[Dict[str, Any]]:
    """The JSON object at ``key``; None where the pipeline treats the entry as absent (missing or empty)."""
    value = meta.get(key)
    if not value:
        return None
    if not isinstance(value, dict):
        raise _refuse(field_name, "a JSON object", value, path)
    return value


def _required(entry: Dict[str, Any], key: str, prefix: str, path: str) -> Any:
    if key not in entry:
        raise PalnetError("metadata field {}.{} is missing".format(prefix, key), path)
    return entry[key]


def check_network_sizes(network: Any, path: Optional[str] = None) -> None:
    """Refuse (one line naming ``path`` and the field) a network configuration whose sizes lie
    outside METADATA_RANGES: the cost of every forward pass grows with them."""
    if not isinstance(network, dict):
        return  # NetworkConfig.from_dict says what is wrong with it
    for key in ("n_landmarks", "patch_size", "fc", "in_channels"):
        value = network.get(key)
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            _int_in(value, "network." + key, path)
    for key in ("widths", "pools"):
        value = network.get(key)
        if isinstance(value, (list, tuple)):
            if len(value) > MAX_BLOCKS:
                raise _refuse("network." + key, "a list of at most {} numbers".format(MAX_BLOCKS), value, path)
            for v in value:
                if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
                    _int_in(v, "network." + key, path)


def _check_prior(entry: Dict[str, Any], prefix: str, n: int, path: str) -> None:
    _array_in(_required(entry, "mean", prefix, path), prefix + ".mean", (n, 3), path, "shape_prior.mean")
    if "bias" in entry:
        _array_in(entry["bias"], prefix + ".bias", (n, 3), path, "shape_prior.bias")
    _array_in(_required(entry, "gain", prefix, path), prefix + ".gain", (3 * n, 3 * n), path, "shape_prior.gain")


def check_metadata(meta: Dict[str, Any], n_landmarks: int, path: Optional[str] = None) -> None:
    """Refuse, with one line naming ``path`` and the field, metadata the pipeline would read
    values out of range from (METADATA_RANGES). Besides ``protocol.labels``, fields may be
    absent: the pipeline does without some and names the others it needs when they are."""
    n = int(n_landmarks)
    if "units" in meta and meta["units"] != "mm":
        raise _refuse("units", "\"mm\" (the network works in the canonical frame, in mm)", meta["units"], path)
    # The names of the outputs: every prediction labels its landmarks with them.
    protocol = _object(meta, "protocol", "protocol", path) or {}
    labels = _required(protocol, "labels", "protocol", path)
    if not isinstance(labels, list) or len(labels) != n or \
            not all(isinstance(x, str) and x for x in labels) or len(set(labels)) != n:
        raise _refuse("protocol.labels", "a list of {} different names".format(n), labels, path)
    landmarks = protocol.get("landmarks")
    if landmarks is not None and (not isinstance(landmarks, list)
                                  or not all(isinstance(x, dict) for x in landmarks)):
        raise _refuse("protocol.landmarks", "a list of JSON objects", landmarks, path)
    if "refine_steps" in meta:
        _int_in(meta["refine_steps"], "refine_steps", path)
    patch = _object(meta, "patch", "patch", path)
    if patch is not None:
        for key in ("spacing_mm", "scale_mm"):
            if key in patch:
                _number_in(patch[key], "patch." + key, path)
    if "template" in meta:
        t = _array_in(meta["template"], "template", (None, 3), path)
        if not 3 <= len(t) <= MAX_TEMPLATE_POINTS:
            raise _refuse("template", "3 to {} points".format(MAX_TEMPLATE_POINTS), "{} points".format(len(t)), path)
    if "mean_landmarks" in meta:
        _array_in(meta["mean_landmarks"], "mean_landmarks", (n, 3), path)
    modes = _object(meta, "landmark_modes", "landmark_modes", path)
    if modes is not None:
        coef = _array_in(_required(modes, "coef_mean", "landmark_modes", path), "landmark_modes.coef_mean",
                         (None,), path)
        if len(coef) > MAX_MODES:
            raise _refuse("landmark_modes.coef_mean", "at most {} numbers".format(MAX_MODES),
                          "{} numbers".format(len(coef)), path)
        _array_in(_required(modes, "landmark_mean", "landmark_modes", path), "landmark_modes.landmark_mean",
                  (n, 3), path)
        _array_in(_required(modes, "modes", "landmark_modes", path), "landmark_modes.modes", (len(coef), n, 3), path)
    prior = _object(meta, "shape_prior", "shape_prior", path)
    if prior is not None:
        _check_prior(prior, "shape_prior", n, path)
    again = _object(meta, "second_round", "second_round", path)
    if again is not None:
        _int_in(_required(again, "refine_steps", "second_round", path), "second_round.refine_steps", path)
        prior = _required(again, "shape_prior", "second_round", path)
        if not isinstance(prior, dict) or not prior:
            raise _refuse("second_round.shape_prior", "a JSON object", prior, path)
        _check_prior(prior, "second_round.shape_prior", n, path)
    choice = _object(meta, "prior_choice", "prior_choice", path)
    if choice is not None:
        first = _required(choice, "shape_prior", "prior_choice", path)
        if not isinstance(first, dict) or not first:
            raise _refuse("prior_choice.shape_prior", "a JSON object", first, path)
        _check_prior(first, "prior_choice.shape_prior", n, path)
        _array_in(_required(first, "covariance", "prior_choice.shape_prior", path),
                  "prior_choice.shape_prior.covariance", (3 * n, 3 * n), path, "prior_choice.shape_prior.covariance")
        if choice.get("second_round"):
            if not isinstance(choice["second_round"], dict):
                raise _refuse("prior_choice.second_round", "a JSON object", choice["second_round"], path)
            _check_prior(choice["second_round"], "prior_choice.second_round", n, path)
        for key in ("threshold", "width"):
            _number_in(_required(choice, key, "prior_choice", path), "prior_choice." + key, path)
    table = _object(meta, "confidence", "confidence", path)
    if table is not None:
        spread = _array_in(_required(table, "spread_mm", "confidence", path), "confidence.spread_mm", (None,), path)
        _array_in(_required(table, "p_within_2mm", "confidence", path), "confidence.p_within_2mm", (len(spread),), path)
        if not 1 <= len(spread) <= MAX_CONFIDENCE_ROWS:
            raise _refuse("confidence.spread_mm", "1 to {} numbers".format(MAX_CONFIDENCE_ROWS),
                          "{} numbers".format(len(spread)), path)
        if np.any(np.diff(spread) < 0):  # np.interp needs it so, else it answers nonsense
            raise _refuse("confidence.spread_mm", "non-decreasing", spread.tolist(), path)
    if _object(meta, "arbitration", "arbitration", path) is not None:
        rule = rule_from(meta, n, path)
        _number_in(rule.trigger_spread_mm, "arbitration.trigger_spread_mm", path)
        finite = rule.onset_mm[np.isfinite(rule.onset_mm)]
        if finite.size:
            _number_in(float(finite.max()), "arbitration.onset_mm", path)


def _entries(zf: zipfile.ZipFile, path: str) -> Dict[str, zipfile.ZipInfo]:
    """The archive's entries by name (``.npy`` dropped, as NumPy names them)."""
    infos = zf.infolist()
    if len(infos) > MAX_ENTRIES:
        raise PalnetError("holds {} entries, more than a model file may ({})".format(len(infos), MAX_ENTRIES), path)
    out = {}  # type: Dict[str, zipfile.ZipInfo]
    for info in infos:
        name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        if name in out:
            raise PalnetError("entry {} is in the file twice".format(name), path)
        out[name] = info
    return out


def _header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, path: str, limit: int):
    """(shape, fortran order, dtype, header bytes) of an entry, checked against ``limit`` and
    against the entry's own size before any of its data is read."""
    if not info.filename.endswith(".npy"):
        raise PalnetError("entry {} is not a NumPy array".format(name), path)
    if info.file_size > limit:
        raise PalnetError("entry {} holds {} bytes, more than a model entry may ({}); not read".format(
            name, info.file_size, limit), path)
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise PalnetError("entry {} is a .npy version {}.{} array, which palnet does not read".format(
                name, *version), path)
        offset = f.tell()
    if dtype.hasobject:
        raise PalnetError("entry {} is a pickled Python object; refused because loading it could run code"
                          .format(name), path)
    count = 1
    for d in shape:
        count *= int(d)  # Python integers: a declared shape cannot overflow into a small size
    if count * dtype.itemsize > info.file_size - offset:
        raise PalnetError("entry {} declares shape {} of {} ({} bytes) but holds {} bytes; not read".format(
            name, tuple(shape), dtype, count * dtype.itemsize, max(0, info.file_size - offset)), path)
    return tuple(int(d) for d in shape), bool(fortran), dtype, offset


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, header, path: str) -> np.ndarray:
    """The entry's array, read in chunks into memory the header has already been checked for."""
    shape, fortran, dtype, offset = header
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    flat = np.empty(count, dtype=dtype)
    buf = memoryview(flat.view(np.uint8)) if flat.nbytes else memoryview(b"")
    with zf.open(info) as f:
        f.read(offset)
        pos = 0
        while pos < flat.nbytes:
            chunk = f.read(min(_READ_CHUNK, flat.nbytes - pos))
            if not chunk:
                raise PalnetError("entry {} ends early: damaged model file".format(name), path)
            buf[pos:pos + len(chunk)] = chunk
            pos += len(chunk)
    return flat.reshape(shape, order="F" if fortran else "C")


def _parse_metadata(raw: np.ndarray, path: str) -> Dict[str, Any]:
    try:
        meta = json.loads(str(raw[()]))
    except ValueError as e:
        raise PalnetError("metadata is not valid JSON ({})".format(e), path) from None
    except RecursionError:
        raise PalnetError("metadata is not valid JSON (nested too deeply)", path) from None
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


def _load(path: str) -> Model:
    with zipfile.ZipFile(path) as zf:
        entries = _entries(zf, path)
        if METADATA_KEY not in entries:
            raise PalnetError("no metadata entry: not a PALNet model file", path)
        info = entries[METADATA_KEY]
        header = _header(zf, info, METADATA_KEY, path, MAX_METADATA_BYTES)
        if header[0] != () or header[2].kind != "U":
            raise PalnetError("metadata entry is not a JSON text", path)
        meta = _parse_metadata(_read(zf, info, METADATA_KEY, header, path), path)
        network = meta.pop("network")
        check_network_sizes(network, path)
        config = NetworkConfig.from_dict(network, path)
        # Every weight's name, type and shape before any weight is read.
        headers, total = {}, info.file_size
        for name, winfo in entries.items():
            if name.startswith(WEIGHT_PREFIX):
                key = name[len(WEIGHT_PREFIX):]
                headers[key] = (winfo, _header(zf, winfo, name, path, MAX_ENTRY_BYTES))
                if headers[key][1][2].kind != "f":
                    raise PalnetError("weight {} is {}, not floating point".format(key, headers[key][1][2]), path)
                total += winfo.file_size
        check_weights({k: SimpleNamespace(shape=h[0]) for k, (_, h) in headers.items()}, config, path)
        if total > MAX_MODEL_BYTES:
            raise PalnetError("holds {} bytes of weights and metadata, more than a model file may ({}); not read"
                              .format(total, MAX_MODEL_BYTES), path)
        check_metadata(meta, config.n_landmarks, path)
        weights = {k: _read(zf, winfo, WEIGHT_PREFIX + k, h, path) for k, (winfo, h) in headers.items()}
    return Model(weights, config, meta, source=path)


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
        model = _load(path)
    except PalnetError as e:
        raise PalnetError(e.message, e.path or path) from None
    except (OSError, EOFError, ValueError, KeyError, RecursionError, RuntimeError, NotImplementedError,
            zipfile.BadZipFile, zlib.error) as e:
        raise PalnetError("damaged model file ({}: {})".format(type(e).__name__, e), path) from None
    bad = [k for k, v in model.weights.items() if not np.isfinite(v).all()]
    if bad:
        raise PalnetError("weight(s) {} contain NaN or infinite values".format(", ".join(bad[:4])), path)
    return model
