"""Reading a small text file (a protocol, measurement definitions, norms, a landmark file) with
one clear line for each way it can fail, naming the file."""
import json
import os
from typing import Union

from .errors import PalnetError

PathLike = Union[str, "os.PathLike[str]"]


def read_text(path: PathLike, what: str, kind: str = "text", newline=None) -> str:
    """The file's text (UTF-8, a byte-order mark skipped). ``what``: the file's role in the
    messages ("protocol file"); ``kind``: what its contents are ("JSON", "a CSV file")."""
    path = os.fspath(path)
    try:
        with open(path, "r", encoding="utf-8-sig", newline=newline) as f:
            return f.read()
    except FileNotFoundError:
        raise PalnetError("{} not found".format(what), path) from None
    except IsADirectoryError:
        raise PalnetError("is a folder, not a {}".format(what), path) from None
    except UnicodeDecodeError:
        raise PalnetError("not a text file (a {} is {})".format(what, kind), path) from None
    except OSError as e:
        raise PalnetError("cannot read: {}".format(e.strerror or e), path) from None


def file_version(d: dict, newest: int, what: str, source) -> int:
    """The ``"version"`` of a versioned JSON file's object ``d`` (``newest`` when it has none):
    a positive whole number no newer than ``newest``, else one line naming ``source``.
    ``what``: the file's kind in the message ("protocol", "measurement definitions")."""
    version = d.get("version", newest)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PalnetError("'version' must be a positive whole number, not {!r}".format(version), source)
    if version > newest:
        raise PalnetError("{} version {} is newer than this palnet reads (up to {}); update palnet".format(
            what, version, newest), source)
    return version


def read_json(path: PathLike, what: str):
    """The file's JSON value; a file that is not valid JSON is one line with the place it breaks."""
    text = read_text(path, what, "JSON")
    try:
        return json.loads(text)
    except ValueError as e:
        where = " (line {}, column {})".format(e.lineno, e.colno) if hasattr(e, "lineno") else ""
        raise PalnetError("not valid JSON: {}{}".format(getattr(e, "msg", str(e)), where), os.fspath(path)) from None
