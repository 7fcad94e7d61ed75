"""Measurement definitions: a JSON file beside the landmark protocol, read and checked here.

The shipped file, ``Resources/Protocols/palnet50_measurements.json``, holds the standard
soft-tissue measurements on the 50 palnet50 landmarks; users may write their own (see
docs/measurements.md for the format). Every problem with a file is a PalnetError: one line
naming the file, the measurement and what is wrong.
"""
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from ..errors import PalnetError
from ..resources import default_protocol_path
from ..textfiles import file_version, read_json

FORMAT = "palnet-measurements"
VERSION = 1
DEFAULT_FILE = "palnet50_measurements.json"

# kind -> units of its values. "projected" is a distance along an axis of the face frame,
# "arc" a length along the scan's surface, "asymmetry" a root mean square in mm.
KIND_UNITS = {"distance": "mm", "projected": "mm", "angle": "deg", "ratio": "", "arc": "mm", "asymmetry": "mm"}
KINDS = tuple(KIND_UNITS)
AXES = ("x", "y", "z")  # of the face frame: the subject's left, up, forward
_LANDMARK_COUNT = {"distance": (2, 2), "projected": (2, 2), "angle": (3, 3), "arc": (2, None), "asymmetry": (1, None)}
_FIELDS = {"id", "name", "description", "kind", "landmarks", "units", "reference", "group", "axis", "of", "scale",
           "region"}
_ONLY_FOR = {"axis": "projected", "of": "ratio", "scale": "ratio", "region": "asymmetry"}
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.'+-]*$")

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class MeasurementDefinition:
    """One measurement. ``landmarks`` are the labels it is computed from, in the order its
    kind reads them (an angle's vertex in the middle, an arc's path in order); a ratio's are
    those of ``of`` (numerator id, denominator id), times ``scale``; an asymmetry's are the
    landmarks it summarises (empty: every landmark, or those of ``region``)."""

    id: str
    name: str
    description: str
    kind: str
    landmarks: Tuple[str, ...]
    units: str
    reference: Optional[str] = None
    group: str = ""
    axis: Optional[str] = None
    of: Tuple[str, ...] = ()
    scale: float = 1.0
    region: Optional[str] = None


class Definitions:
    """The measurements of one file, in file order, with the landmarks that set up the face frame."""

    def __init__(self, measurements: Sequence[MeasurementDefinition], name: str = "custom", description: str = "",
                 references: Sequence[str] = (), frame_upper: Sequence[str] = (), frame_lower: Sequence[str] = (),
                 protocol: Optional[str] = None, source: Optional[PathLike] = None):
        self.measurements = tuple(measurements)
        self.name, self.description = str(name), str(description)
        self.references = tuple(references)
        self.frame_upper, self.frame_lower = tuple(frame_upper), tuple(frame_lower)
        self.protocol = protocol
        self.source = None if source is None else os.fspath(source)
        self._by_id = {m.id: m for m in self.measurements}

    def __iter__(self) -> Iterator[MeasurementDefinition]:
        return iter(self.measurements)

    def __len__(self) -> int:
        return len(self.measurements)

    def __getitem__(self, measurement_id: str) -> MeasurementDefinition:
        try:
            return self._by_id[measurement_id]
        except KeyError:
            raise PalnetError("no measurement {!r} in {}".format(measurement_id, self.name), self.source) from None

    def __contains__(self, measurement_id: object) -> bool:
        return measurement_id in self._by_id

    def __repr__(self) -> str:
        return "Definitions({!r}, {} measurements)".format(self.name, len(self))

    @property
    def ids(self) -> List[str]:
        return [m.id for m in self.measurements]

    @property
    def labels(self) -> List[str]:
        """Every landmark label a measurement or the face frame names, in order of first use."""
        seen = {}  # type: Dict[str, None]
        for m in self.measurements:
            seen.update((lab, None) for lab in m.landmarks)
        seen.update((lab, None) for lab in self.frame_upper + self.frame_lower)
        return list(seen)

    def landmarks_of(self, measurement_id: str) -> Tuple[str, ...]:
        """The landmarks a measurement depends on, through a ratio's parts too."""
        m = self[measurement_id]
        if m.kind != "ratio":
            return m.landmarks
        out = {}  # type: Dict[str, None]
        for part in m.of:
            out.update((lab, None) for lab in self.landmarks_of(part))
        return tuple(out)

    def check_labels(self, labels: Sequence[str], protocol_name: str = "the protocol") -> None:
        """A PalnetError for the first landmark (or region, see :meth:`check_regions`) not in ``labels``."""
        known = set(labels)
        for m in self.measurements:
            for lab in m.landmarks:
                if lab not in known:
                    raise PalnetError("measurement {!r} uses landmark {!r}, which {} does not have".format(
                        m.id, lab, protocol_name), self.source)
        for lab in self.frame_upper + self.frame_lower:
            if lab not in known:
                raise PalnetError("'frame' uses landmark {!r}, which {} does not have".format(lab, protocol_name),
                                  self.source)

    def check_regions(self, regions: Sequence[str], protocol_name: str = "the protocol") -> None:
        for m in self.measurements:
            if m.region is not None and m.region not in regions:
                raise PalnetError("measurement {!r}: region {!r} is not a region of {} ({})".format(
                    m.id, m.region, protocol_name, ", ".join(regions)), self.source)

    @classmethod
    def from_dict(cls, d: Any, source: Optional[PathLike] = None) -> "Definitions":
        """Build and check from the JSON form; ``source`` is named in every error."""
        if not isinstance(d, dict):
            raise PalnetError("measurement definitions must be a JSON object, not {}".format(_kind(d)), source)
        fmt = d.get("format")
        if fmt is None:
            raise PalnetError("missing field 'format' (expected {!r})".format(FORMAT), source)
        if fmt != FORMAT:
            hint = " (this is a landmark protocol; give the measurements file)" if fmt == "palnet-protocol" else ""
            raise PalnetError("not palnet measurement definitions: 'format' is {!r}, expected {!r}{}".format(
                fmt, FORMAT, hint), source)
        file_version(d, VERSION, "measurement definitions", source)
        items = d.get("measurements")
        if items is None:
            raise PalnetError("missing field 'measurements'", source)
        if not isinstance(items, list):
            raise PalnetError("'measurements' must be a list, not {}".format(_kind(items)), source)
        if not items:
            raise PalnetError("the measurement list is empty", source)
        measurements = []
        seen = set()  # type: set
        for i, item in enumerate(items):
            m = _definition(item, i, source)
            if m.id in seen:
                raise PalnetError("measurement id {!r} appears twice".format(m.id), source)
            seen.add(m.id)
            measurements.append(m)
        _check_ratios(measurements, source)
        upper, lower = _frame(d.get("frame"), source)
        projected = [m.id for m in measurements if m.kind == "projected"]
        if projected and not (upper and lower):
            raise PalnetError("measurement {!r} is projected on an axis of the face frame, but the file has no "
                              "'frame' (\"frame\": {{\"upper\": [labels], \"lower\": [labels]}})".format(projected[0]),
                              source)
        references = d.get("references", [])
        if isinstance(references, str):
            references = [references]
        if not isinstance(references, list) or not all(isinstance(r, str) for r in references):
            raise PalnetError("'references' must be a list of strings", source)
        protocol = d.get("protocol")
        if protocol is not None and not isinstance(protocol, str):
            raise PalnetError("'protocol' must be a string (the protocol's name), not {}".format(_kind(protocol)),
                              source)
        default_name = Path(os.fspath(source)).stem if source is not None else "custom"
        return cls(measurements, name=_text(d.get("name", default_name), "'name'", source),
                   description=_text(d.get("description", ""), "'description'", source), references=references,
                   frame_upper=upper, frame_lower=lower, protocol=protocol, source=source)

    @classmethod
    def load(cls, path: PathLike) -> "Definitions":
        path = os.fspath(path)
        return cls.from_dict(read_json(path, "measurement definitions file"), source=path)


def default_definitions_path() -> Path:
    """The shipped definitions, beside the shipped protocol."""
    return default_protocol_path().parent / DEFAULT_FILE


_DEFAULT = {}  # type: Dict[str, Definitions]


def load_definitions(path: Optional[PathLike] = None, protocol=None) -> Definitions:
    """Read and check a definitions file (default: the shipped one, read once and shared).

    With a ``protocol`` (a :class:`palnet.protocol.Protocol`), a landmark or region the
    protocol lacks is an error too; without one, a measurement whose landmarks a face lacks
    is simply empty for that face.
    """
    if path is None:
        if "shipped" not in _DEFAULT:
            _DEFAULT["shipped"] = Definitions.load(default_definitions_path())
        defs = _DEFAULT["shipped"]
    else:
        defs = Definitions.load(path)
    if protocol is not None:
        name = "protocol {!r}".format(protocol.name)
        defs.check_labels(protocol.labels, name)
        defs.check_regions(protocol.regions, name)
    return defs


# ---------------------------------------------------------------- one measurement

def _definition(item: Any, i: int, source) -> MeasurementDefinition:
    if not isinstance(item, dict):
        raise PalnetError("measurement {} must be a JSON object, not {}".format(i + 1, _kind(item)), source)
    if "id" not in item:
        raise PalnetError("measurement {} is missing field 'id'".format(i + 1), source)
    mid = _text(item["id"], "measurement {} 'id'".format(i + 1), source)
    if not _ID.match(mid):
        raise PalnetError("measurement {} id {!r}: use letters, digits and _ . ' + - only (it names table "
                          "columns), starting with a letter or digit".format(i + 1, mid), source)
    where = "measurement {!r}".format(mid)
    unknown = sorted(k for k in item if k not in _FIELDS and not str(k).startswith("_") and k != "comment")
    if unknown:
        raise PalnetError("{}: unknown field {!r} (fields: {})".format(where, unknown[0], ", ".join(sorted(_FIELDS))),
                          source)
    if "kind" not in item:
        raise PalnetError("{} is missing field 'kind' (one of {})".format(where, ", ".join(KINDS)), source)
    kind = item["kind"]
    if kind not in KIND_UNITS:
        raise PalnetError("{}: unknown kind {!r} (use {})".format(where, kind, ", ".join(KINDS)), source)
    for key, owner in _ONLY_FOR.items():
        if key in item and kind != owner:
            raise PalnetError("{}: field {!r} is for {} measurements, not {}".format(where, key, owner, kind), source)
    units = item.get("units", KIND_UNITS[kind])
    if units != KIND_UNITS[kind]:
        raise PalnetError("{}: units {!r}, but {} measurements are in {}".format(
            where, units, kind, repr(KIND_UNITS[kind]) if KIND_UNITS[kind] else "no units ('')"), source)
    landmarks = _landmarks(item, kind, where, source)
    axis, of, scale = None, (), 1.0
    if kind == "projected":
        axis = item.get("axis")
        if axis not in AXES:
            raise PalnetError("{}: 'axis' must be one of x (the subject's left), y (up), z (forward), not {!r}".format(
                where, axis), source)
    if kind == "ratio":
        of = item.get("of")
        if not (isinstance(of, list) and len(of) == 2 and all(isinstance(x, str) for x in of)):
            raise PalnetError("{}: a ratio needs 'of': [numerator id, denominator id]".format(where), source)
        of = tuple(of)
        scale = item.get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0 or scale == float("inf"):
            raise PalnetError("{}: 'scale' must be a positive number (100 for an index), not {!r}".format(
                where, scale), source)
    region = item.get("region")
    if region is not None:
        region = _text(region, where + " 'region'", source)
        if landmarks:
            raise PalnetError("{}: give 'landmarks' or 'region', not both".format(where), source)
    reference = item.get("reference")
    if reference is not None:
        reference = _text(reference, where + " 'reference'", source)
    return MeasurementDefinition(
        id=mid, name=_text(item.get("name", mid), where + " 'name'", source),
        description=_text(item.get("description", ""), where + " 'description'", source),
        kind=kind, landmarks=landmarks, units=units, reference=reference,
        group=_text(item.get("group", kind), where + " 'group'", source), axis=axis, of=of,
        scale=float(scale), region=region)


def _landmarks(item: Dict[str, Any], kind: str, where: str, source) -> Tuple[str, ...]:
    if kind == "ratio":
        if "landmarks" in item:
            raise PalnetError("{}: a ratio takes its landmarks from its parts: give 'of', not 'landmarks'".format(
                where), source)
        return ()
    if "landmarks" not in item:
        if kind == "asymmetry":
            return ()
        raise PalnetError("{} is missing field 'landmarks'".format(where), source)
    labels = item["landmarks"]
    if not isinstance(labels, list) or not all(isinstance(x, str) and x.strip() for x in labels):
        raise PalnetError("{}: 'landmarks' must be a list of landmark labels".format(where), source)
    low, high = _LANDMARK_COUNT[kind]
    if len(labels) < low or (high is not None and len(labels) > high):
        need = str(low) if low == high else "at least {}".format(low)
        raise PalnetError("{}: a{} {} needs {} landmarks, not {}".format(
            where, "n" if kind[0] in "aeiou" else "", kind, need, len(labels)), source)
    if kind == "arc":
        if any(a == b for a, b in zip(labels, labels[1:])):
            raise PalnetError("{}: an arc's path names the same landmark twice in a row".format(where), source)
    elif len(set(labels)) != len(labels):
        raise PalnetError("{}: landmark {!r} is named twice".format(
            where, next(x for x in labels if labels.count(x) > 1)), source)
    return tuple(labels)


def _check_ratios(measurements: List[MeasurementDefinition], source) -> None:
    by_id = {m.id: m for m in measurements}
    for m in measurements:
        for part in m.of:
            if part not in by_id:
                raise PalnetError("measurement {!r}: 'of' names {!r}, which is not a measurement of this file".format(
                    m.id, part), source)
        if m.of and by_id[m.of[0]].units != by_id[m.of[1]].units:
            raise PalnetError("measurement {!r}: {!r} is in {!r} and {!r} in {!r}; a ratio divides like by like".format(
                m.id, m.of[0], by_id[m.of[0]].units, m.of[1], by_id[m.of[1]].units), source)
    state = {}  # type: Dict[str, str]

    def visit(mid: str, trail: List[str]) -> None:
        state[mid] = "open"
        for part in by_id[mid].of:
            if state.get(part) == "open":
                raise PalnetError("ratio {!r} depends on itself ({})".format(
                    part, " -> ".join(trail[trail.index(part):] + [part])), source)
            if part not in state:
                visit(part, trail + [part])
        state[mid] = "done"

    for m in measurements:
        if m.id not in state:
            visit(m.id, [m.id])


def _frame(value: Any, source) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    if value is None:
        return (), ()
    if not isinstance(value, dict):
        raise PalnetError("'frame' must be an object {\"upper\": [labels], \"lower\": [labels]}", source)
    unknown = sorted(k for k in value if k not in ("upper", "lower"))
    if unknown:
        raise PalnetError("'frame': unknown field {!r} (fields: upper, lower)".format(unknown[0]), source)
    out = []
    for key in ("upper", "lower"):
        labels = value.get(key)
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x.strip() for x in labels):
            raise PalnetError("'frame' {!r} must be a non-empty list of landmark labels".format(key), source)
        out.append(tuple(labels))
    if set(out[0]) & set(out[1]):
        raise PalnetError("'frame': landmark {!r} is both upper and lower".format(sorted(set(out[0]) & set(out[1]))[0]),
                          source)
    return out[0], out[1]


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false",
            type(None): "null"}.get(type(value), "a number")


def _text(value: Any, what: str, source) -> str:
    if not isinstance(value, str):
        raise PalnetError("{} must be a string, not {}".format(what, _kind(value)), source)
    return value
