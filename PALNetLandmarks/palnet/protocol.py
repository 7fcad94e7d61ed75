"""Landmark protocols: which landmarks a model places, what they mean, how they mirror.

A protocol is a JSON file (``"format": "palnet-protocol"``, ``"version": 1``).
The shipped one, ``Resources/Protocols/palnet50.json``, holds the 50 Farkas /
LAFAS soft-tissue landmarks of PAL-Net; users may write their own with any
number of landmarks. Nothing in palnet assumes 50.

Right and left are always the *subject's* right and left (``ex_R`` is the outer
corner of the subject's right eye, which a viewer facing the subject sees on
their left).

What a custom protocol file may leave out (each omission has one meaning):

- ``name``: the file's stem (``mine.json`` -> ``mine``); ``description``,
  ``references``: empty.
- a landmark's ``name``: its label; ``definition``: empty.
- a landmark's ``side``: read from the label's suffix, ``_R``/``_r`` -> right,
  ``_L``/``_l`` -> left, otherwise midline.
- a landmark's ``mirror``: a midline landmark is its own mirror; a lateral
  landmark's partner is the same label with the other side's suffix (``ex_R`` <->
  ``ex_L``) when the protocol has it, else the landmark is *unpaired*
  (``mirror`` is ``None``, written as ``null``). A protocol with unpaired
  landmarks is valid, but :meth:`Protocol.mirror_permutation` refuses it
  (check :attr:`Protocol.is_mirror_symmetric` first), because a left-right
  flip has nowhere to send them.
- a landmark's ``region``: ``"other"`` (appended to ``regions`` if the list
  lacks it).
- ``regions``: the landmarks' regions in order of first use. The k-th region,
  if it has no ``color``, gets ``DEFAULT_REGION_COLORS[k % 10]``; the shipped
  protocol's seven regions use the first seven of these.

What is always an error (a :class:`PalnetError` naming the file): a file that is
not JSON, a ``format`` other than ``palnet-protocol``, a newer ``version``, no
``landmarks`` or an empty list, a landmark without ``label``, duplicate labels,
an unknown ``side``, a region not listed in ``regions``, a ``mirror`` that is
not a label of the protocol, a mirror relation that is not symmetric or pairs
two landmarks of the same side, and a midline landmark whose mirror is not
itself.
"""
import functools
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import PalnetError
from .resources import default_protocol_path
from .textfiles import file_version, read_json

FORMAT = "palnet-protocol"
VERSION = 1
SIDES = ("midline", "right", "left")
DEFAULT_REGION = "other"

# Saturated colours that stay readable on light and dark skin renderings,
# used in order for regions that bring no colour of their own.
DEFAULT_REGION_COLORS = (
    (0.00, 0.45, 1.00),  # blue
    (0.00, 0.75, 0.30),  # green
    (0.90, 0.00, 0.80),  # magenta
    (0.00, 0.85, 0.95),  # cyan
    (0.60, 0.10, 1.00),  # violet
    (1.00, 0.90, 0.00),  # yellow
    (0.10, 0.10, 0.45),  # navy
    (0.60, 0.90, 0.10),  # lime
    (0.00, 0.45, 0.45),  # teal
    (0.90, 0.10, 0.10),  # red
)

_SIDE_SUFFIXES = {"_R": "right", "_r": "right", "_L": "left", "_l": "left"}
_OTHER_SUFFIX = {"_R": "_L", "_L": "_R", "_r": "_l", "_l": "_r"}

Color = Tuple[float, float, float]
PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class LandmarkDefinition:
    """One landmark of a protocol.

    ``side`` is ``"midline"``, ``"right"`` or ``"left"`` (the subject's);
    ``mirror`` is the label of the landmark it becomes under a left-right flip
    (itself for midline landmarks, ``None`` for an unpaired lateral one).
    """

    label: str
    name: str
    definition: str
    side: str
    region: str
    mirror: Optional[str]


def side_from_label(label: str) -> str:
    """``"right"``/``"left"`` for labels ending ``_R``/``_r``/``_L``/``_l``, else ``"midline"``."""
    return _SIDE_SUFFIXES.get(label[-2:], "midline") if len(label) > 2 else "midline"


def mirror_label(label: str) -> Optional[str]:
    """``ex_R`` -> ``ex_L`` (and back, same letter case); ``None`` for labels with no side suffix."""
    suffix = label[-2:]
    if len(label) <= 2 or suffix not in _OTHER_SUFFIX:
        return None
    return label[:-2] + _OTHER_SUFFIX[suffix]


class Protocol:
    """An ordered list of landmark definitions with their regions and region colours.

    The order of ``landmarks`` is the order of every array of points a model
    predicts. A Protocol does not change after it is built (the default one is
    shared); the list-valued properties return copies.
    """

    def __init__(
        self,
        name: str,
        landmarks: Sequence[LandmarkDefinition],
        regions: Optional[Sequence[str]] = None,
        region_colors: Optional[Dict[str, Sequence[float]]] = None,
        description: str = "",
        references: Optional[Sequence[str]] = None,
        source: Optional[PathLike] = None,
    ):
        self.name = str(name)
        self.description = str(description)
        self.source = None if source is None else os.fspath(source)
        self._references = tuple(str(r) for r in (references or ()))
        self._landmarks = tuple(landmarks)
        if regions is None:
            regions = list(dict.fromkeys(lm.region for lm in self._landmarks))
        self._regions = tuple(str(r) for r in regions)
        colors = dict(region_colors or {})
        palette = iter(DEFAULT_REGION_COLORS * (len(self._regions) // len(DEFAULT_REGION_COLORS) + 1))
        self._colors = {}  # type: Dict[str, Color]
        for region in self._regions:
            default = next(palette)
            given = colors.get(region)
            self._colors[region] = default if given is None else _color(given, region, self.source)
        self._validate()
        self._index = {lm.label: i for i, lm in enumerate(self._landmarks)}

    # ---------------------------------------------------------------- building

    @classmethod
    def from_labels(cls, labels: Sequence[str], name: str = "custom",
                    source: Optional[PathLike] = None) -> "Protocol":
        """A minimal protocol for bare labels (a user's own landmark files, no protocol file).

        Sides come from ``_R``/``_r``/``_L``/``_l`` suffixes; a lateral label's
        mirror is its partner when that label is present, else ``None``.
        Everything lands in one region, ``"other"``.
        """
        labels = [str(x) for x in labels]
        present = set(labels)
        landmarks = []
        for label in labels:
            side = side_from_label(label)
            partner = mirror_label(label) if side != "midline" else label
            landmarks.append(LandmarkDefinition(
                label, label, "", side, DEFAULT_REGION, partner if partner in present else None))
        return cls(name, landmarks, source=source)

    @classmethod
    def from_dict(cls, d: Any, source: Optional[PathLike] = None) -> "Protocol":
        """Build from the JSON form; ``source`` (a file name) is named in every error."""
        if not isinstance(d, dict):
            raise PalnetError("a protocol must be a JSON object, not {}".format(_kind(d)), source)
        if "format" not in d:
            if _looks_like_landmarks(d):
                raise PalnetError("this is a landmark file, not a protocol (no 'format': {!r})".format(FORMAT), source)
            raise PalnetError("missing field 'format' (expected {!r})".format(FORMAT), source)
        if d["format"] != FORMAT:
            raise PalnetError("not a palnet protocol: 'format' is {!r}, expected {!r}".format(d["format"], FORMAT), source)
        file_version(d, VERSION, "protocol", source)
        if "landmarks" not in d:
            raise PalnetError("missing field 'landmarks'", source)
        items = d["landmarks"]
        if not isinstance(items, list):
            raise PalnetError("'landmarks' must be a list, not {}".format(_kind(items)), source)
        if not items:
            raise PalnetError("the landmark list is empty", source)

        labels = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise PalnetError("landmark {} must be a JSON object, not {}".format(i + 1, _kind(item)), source)
            if "label" not in item:
                raise PalnetError("landmark {} is missing field 'label'".format(i + 1), source)
            labels.append(_text(item["label"], "landmark {} 'label'".format(i + 1), source))
        present = set(labels)

        landmarks = []
        for i, (item, label) in enumerate(zip(items, labels)):
            where = "landmark {} ({!r})".format(i + 1, label)
            side = _text(item.get("side", side_from_label(label)), where + " 'side'", source)
            if "mirror" in item:
                mirror = item["mirror"]
                if mirror is not None:
                    mirror = _text(mirror, where + " 'mirror'", source)
            elif side == "midline":
                mirror = label
            else:
                partner = mirror_label(label)
                mirror = partner if partner in present else None
            landmarks.append(LandmarkDefinition(
                label=label,
                name=_text(item.get("name", label), where + " 'name'", source),
                definition=_text(item.get("definition", ""), where + " 'definition'", source),
                side=side,
                region=_text(item.get("region", DEFAULT_REGION), where + " 'region'", source),
                mirror=mirror,
            ))

        regions = None
        colors = {}
        if d.get("regions") is not None:
            if not isinstance(d["regions"], list):
                raise PalnetError("'regions' must be a list, not {}".format(_kind(d["regions"])), source)
            regions = []
            for j, r in enumerate(d["regions"]):
                if isinstance(r, str):
                    rname, color = r, None
                elif isinstance(r, dict) and "name" in r:
                    rname, color = _text(r["name"], "region {} 'name'".format(j + 1), source), r.get("color")
                else:
                    raise PalnetError("region {} must be a name or an object with a 'name'".format(j + 1), source)
                if rname in regions:
                    raise PalnetError("region {!r} is listed twice".format(rname), source)
                regions.append(rname)
                if color is not None:
                    colors[rname] = color
            # An omitted region means "other"; let it through even where the list forgot it.
            if DEFAULT_REGION not in regions and any("region" not in item for item in items):
                regions.append(DEFAULT_REGION)

        if source is not None:
            default_name = Path(os.fspath(source)).stem
        else:
            default_name = "custom"
        references = d.get("references", [])
        if isinstance(references, str):
            references = [references]
        if not isinstance(references, list):
            raise PalnetError("'references' must be a list of strings", source)
        return cls(
            name=_text(d.get("name", default_name), "'name'", source),
            landmarks=landmarks,
            regions=regions,
            region_colors=colors,
            description=_text(d.get("description", ""), "'description'", source),
            references=[_text(r, "'references'", source) for r in references],
            source=source,
        )

    @classmethod
    def load(cls, path: PathLike) -> "Protocol":
        """Read and check a protocol JSON file."""
        path = os.fspath(path)
        return cls.from_dict(read_json(path, "protocol file"), source=path)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form; ``from_dict(p.to_dict()) == p``."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "description": self.description,
            "references": list(self._references),
            "regions": [{"name": r, "color": list(self._colors[r])} for r in self._regions],
            "landmarks": [
                {"label": lm.label, "name": lm.name, "definition": lm.definition,
                 "side": lm.side, "region": lm.region, "mirror": lm.mirror}
                for lm in self._landmarks
            ],
        }

    def save(self, path: PathLike) -> None:
        """Write the JSON form atomically (a temporary file in the same folder, then a rename)."""
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        text = _NUMBER_LIST.sub(_inline_numbers, json.dumps(self.to_dict(), indent=2, ensure_ascii=False)) + "\n"
        try:
            fd, tmp = tempfile.mkstemp(prefix=".protocol-", suffix=".json.tmp", dir=folder)
        except OSError as e:
            raise PalnetError("cannot write protocol: {}".format(e.strerror or e), path) from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            # mkstemp makes the file private (0600); keep the mode the file had, else 0644
            os.chmod(tmp, os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644)
            os.replace(tmp, path)
        except OSError as e:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise PalnetError("cannot write protocol: {}".format(e.strerror or e), path) from None

    # ---------------------------------------------------------------- queries

    @property
    def landmarks(self) -> List[LandmarkDefinition]:
        return list(self._landmarks)

    @property
    def labels(self) -> List[str]:
        return [lm.label for lm in self._landmarks]

    @property
    def regions(self) -> List[str]:
        return list(self._regions)

    @property
    def region_colors(self) -> Dict[str, Color]:
        return dict(self._colors)

    @property
    def references(self) -> List[str]:
        return list(self._references)

    @property
    def is_mirror_symmetric(self) -> bool:
        """True when every landmark has a mirror, so left-right flips are defined."""
        return all(lm.mirror is not None for lm in self._landmarks)

    def __len__(self) -> int:
        return len(self._landmarks)

    def __iter__(self) -> Iterator[LandmarkDefinition]:
        return iter(self._landmarks)

    def __contains__(self, label: object) -> bool:
        return label in self._index

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Protocol):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.name, tuple(self._index)))

    def __repr__(self) -> str:
        return "Protocol({!r}, {} landmarks)".format(self.name, len(self))

    def index(self, label: str) -> int:
        """Position of ``label`` in the landmark order."""
        try:
            return self._index[label]
        except (KeyError, TypeError):
            raise PalnetError("protocol {!r} has no landmark {!r}".format(self.name, label), self.source) from None

    def definition(self, label: str) -> LandmarkDefinition:
        return self._landmarks[self.index(label)]

    def region_of(self, label: str) -> str:
        return self.definition(label).region

    def color_of(self, label: str) -> Color:
        """The colour of the landmark's region, RGB in 0..1."""
        return self._colors[self.region_of(label)]

    def mirror_permutation(self) -> np.ndarray:
        """Index array ``p`` with ``p[i]`` = index of landmark i's mirror.

        After a left-right flip of a face, ``flipped_points[p]`` are again in
        protocol order. ``p[p]`` is the identity.
        """
        unpaired = [lm.label for lm in self._landmarks if lm.mirror is None]
        if unpaired:
            raise PalnetError("protocol {!r} cannot be mirrored: no mirror partner for {}".format(
                self.name, ", ".join(unpaired)), self.source)
        return np.array([self._index[lm.mirror] for lm in self._landmarks], dtype=np.int64)

    def region_indices(self) -> Dict[str, np.ndarray]:
        """Region name -> indices of its landmarks, in region order; regions with none are left out."""
        out = {}
        for region in self._regions:
            idx = [i for i, lm in enumerate(self._landmarks) if lm.region == region]
            if idx:
                out[region] = np.array(idx, dtype=np.int64)
        return out

    # ---------------------------------------------------------------- checks

    def _validate(self) -> None:
        src = self.source
        if not self._landmarks:
            raise PalnetError("the landmark list is empty", src)
        seen = set()  # type: set
        for i, lm in enumerate(self._landmarks):
            if not isinstance(lm, LandmarkDefinition):
                raise PalnetError("landmark {} is not a LandmarkDefinition".format(i + 1), src)
            if not lm.label.strip():
                raise PalnetError("landmark {} has an empty label".format(i + 1), src)
            if lm.label in seen:
                raise PalnetError("duplicate landmark label {!r}".format(lm.label), src)
            seen.add(lm.label)
        regions = set(self._regions)
        by_label = {lm.label: lm for lm in self._landmarks}
        for lm in self._landmarks:
            if lm.side not in SIDES:
                raise PalnetError("landmark {!r} has unknown side {!r} (use midline, right or left)".format(
                    lm.label, lm.side), src)
            if lm.region not in regions:
                raise PalnetError("landmark {!r} is in region {!r}, which is not listed in 'regions' ({})".format(
                    lm.label, lm.region, ", ".join(self._regions) or "none"), src)
            if lm.side == "midline":
                if lm.mirror != lm.label:
                    raise PalnetError("midline landmark {!r} must be its own mirror, not {!r}".format(
                        lm.label, lm.mirror), src)
                continue
            if lm.mirror is None:
                continue
            if lm.mirror not in by_label:
                raise PalnetError("landmark {!r} has mirror {!r}, which is not a label of this protocol".format(
                    lm.label, lm.mirror), src)
            partner = by_label[lm.mirror]
            if partner.mirror != lm.label:
                raise PalnetError("mirror is not symmetric: {!r} mirrors to {!r} but {!r} mirrors to {!r}".format(
                    lm.label, lm.mirror, partner.label, partner.mirror), src)
            if partner.side == lm.side:
                raise PalnetError("{} landmark {!r} has mirror {!r} on the same side".format(
                    lm.side, lm.label, partner.label), src)


# -------------------------------------------------------------------- helpers

def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false",
            type(None): "null"}.get(type(value), "a number")


def _text(value: Any, what: str, source: Optional[PathLike]) -> str:
    if not isinstance(value, str):
        raise PalnetError("{} must be a string, not {}".format(what, _kind(value)), source)
    return value


def _color(value: Any, region: str, source: Optional[PathLike]) -> Color:
    try:
        rgb = tuple(float(c) for c in value)
    except (TypeError, ValueError):
        rgb = ()
    if len(rgb) != 3 or not all(0.0 <= c <= 1.0 for c in rgb):
        raise PalnetError("region {!r} colour must be [r, g, b] with values in 0..1, not {!r}".format(
            region, value), source)
    return rgb  # type: ignore[return-value]


# A list of numbers that json.dumps spread over lines; raw newlines never occur
# inside JSON strings, so this cannot touch a definition's text.
_NUMBER_LIST = re.compile(r"\[\n[-+0-9.eE,\s]*?\n\s*\]")


def _inline_numbers(match: "re.Match") -> str:
    return "[" + ", ".join(x.strip() for x in match.group(0)[1:-1].split(",")) + "]"


def _looks_like_landmarks(d: Dict[str, Any]) -> bool:
    return "markups" in d or "controlPoints" in d or "markups" in str(d.get("@schema", ""))


@functools.lru_cache(maxsize=1)
def default_protocol() -> Protocol:
    """The shipped 50-landmark PAL-Net protocol (read once, then shared)."""
    return Protocol.load(default_protocol_path())


def protocol_markdown_table(protocol: Protocol) -> str:
    """A Markdown table (label, name, definition, region) of the protocol, one row per landmark."""
    def cell(text: str) -> str:
        return " ".join(text.split()).replace("|", "\\|")

    rows = ["| Label | Name | Definition | Region |", "|---|---|---|---|"]
    for lm in protocol:
        rows.append("| `{}` | {} | {} | {} |".format(
            cell(lm.label), cell(lm.name), cell(lm.definition), cell(lm.region)))
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # python -m palnet.protocol [protocol.json] > table.md
    import sys
    p = Protocol.load(sys.argv[1]) if len(sys.argv) > 1 else default_protocol()
    sys.stdout.write(protocol_markdown_table(p))
