"""Norms for z-scores: a CSV the user brings (palnet ships none).

Columns ``measurement,group,mean,sd`` (a header row; other columns are ignored), one row per
measurement id and group (e.g. a sex and age band); ``z = (value - mean) / sd``. Published
sources are listed in docs/measurements.md.
"""
import csv
import io
import os
from typing import Dict, Optional, Tuple, Union

from ..errors import PalnetError
from ..textfiles import read_text

COLUMNS = ("measurement", "group", "mean", "sd")


class Norms:
    """Mean and SD per (measurement id, group)."""

    def __init__(self, rows: Dict[Tuple[str, str], Tuple[float, float]], source: Optional[str] = None):
        self.rows = dict(rows)
        self.source = source
        self.groups = sorted({g for _, g in self.rows})

    def for_group(self, group: Optional[str], definitions=None) -> Dict[str, Tuple[float, float]]:
        """{measurement id: (mean, sd)} of one group; ``group`` may be None when there is only one.
        With ``definitions``, norms that name none of its measurements are an error."""
        if group is None:
            if len(self.groups) > 1:
                raise PalnetError("the norms have {} groups ({}): choose one (--group)".format(
                    len(self.groups), ", ".join(self.groups)), self.source)
            group = self.groups[0]
        elif group not in self.groups:
            raise PalnetError("no group {!r} in the norms (groups: {})".format(group, ", ".join(self.groups)),
                              self.source)
        table = {mid: v for (mid, g), v in self.rows.items() if g == group}
        if definitions is not None and not any(mid in definitions for mid in table):
            raise PalnetError("none of the norms' measurements ({}) is a measurement of {}".format(
                ", ".join(sorted(table)[:5]) + (", ..." if len(table) > 5 else ""), definitions.name), self.source)
        return table


def load_norms(path: Union[str, "os.PathLike[str]"]) -> Norms:
    """Read and check a norms CSV; every problem is one line naming the file (and row)."""
    path = os.fspath(path)
    text = read_text(path, "norms file", "CSV", newline="")
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader, [])]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise PalnetError("the norms need the columns {} (missing: {})".format(",".join(COLUMNS), ", ".join(missing)),
                          path)
    col = {c: header.index(c) for c in COLUMNS}
    rows = {}  # type: Dict[Tuple[str, str], Tuple[float, float]]
    for line, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise PalnetError("row {}: {} cells, the header has {}".format(line, len(row), len(header)), path)
        mid, group = row[col["measurement"]].strip(), row[col["group"]].strip()
        if not mid:
            raise PalnetError("row {}: empty measurement id".format(line), path)
        numbers = []  # type: List[float]
        for c in ("mean", "sd"):
            try:
                numbers.append(float(row[col[c]]))
            except ValueError:
                raise PalnetError("row {} ({}): {} {!r} is not a number".format(line, mid, c, row[col[c]]),
                                  path) from None
        mean, sd = numbers
        if not (mean == mean and abs(mean) != float("inf")):
            raise PalnetError("row {} ({}): the mean is not a finite number".format(line, mid), path)
        if not sd > 0 or sd == float("inf"):
            raise PalnetError("row {} ({}): sd must be a positive number, not {!r}".format(line, mid, row[col["sd"]]),
                              path)
        if (mid, group) in rows:
            raise PalnetError("row {}: {} in group {!r} appears twice".format(line, mid, group), path)
        rows[(mid, group)] = (mean, sd)
    if not rows:
        raise PalnetError("the norms file has no rows", path)
    return Norms(rows, path)


def as_norms(norms) -> Optional[Norms]:
    """A Norms from a Norms, a path, or None."""
    if norms is None or isinstance(norms, Norms):
        return norms
    return load_norms(norms)
