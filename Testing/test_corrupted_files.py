"""Damaged copies of good files: flipped bytes, cut short, zeroed runs, bytes inserted, a header
character changed. Every one either reads into a usable result (finite points, triangles that
index them) or ends in one PalnetError line naming the file; never a crash, a hang, a traceback
or VTK's own messages. The damage is drawn from fixed seeds, so a failure names a file that can
be made again (the case name holds the format, the kind of damage and the seed).

Meshes are read in child processes with their memory limited (child_reads.py).
"""
import json
import math
import random

import numpy as np
import pytest

from palnet.datatypes import Landmarks, Mesh
from palnet.errors import PalnetError
from palnet.landmark_io import read_landmarks, write_landmarks
from palnet.mesh_io import write_mesh

from child_reads import read_in_children

DAMAGE = ("flip", "cut", "zero", "insert", "header")
SEEDS_PER_FORMAT = 10


def _mesh() -> Mesh:
    """A small curved surface: a 12 x 12 grid bent like a cheek."""
    n = 12
    g = np.mgrid[0:n, 0:n].reshape(2, -1).T.astype(float) * 4.0
    i = np.arange(n * n).reshape(n, n)
    a, b, c, d = i[:-1, :-1].ravel(), i[1:, :-1].ravel(), i[:-1, 1:].ravel(), i[1:, 1:].ravel()
    z = 0.02 * ((g[:, 0] - 22) ** 2 + (g[:, 1] - 22) ** 2)
    return Mesh(np.c_[g, z], np.r_[np.c_[a, b, c], np.c_[b, d, c]])


def damaged(data: bytes, how: str, rng: random.Random) -> bytes:
    out = bytearray(data)
    if how == "flip":
        for _ in range(rng.randint(1, 20)):
            out[rng.randrange(len(out))] = rng.randrange(256)
    elif how == "cut":
        out = out[:rng.randrange(len(out))]
    elif how == "zero":
        at, n = rng.randrange(len(out)), rng.randint(1, 2000)
        out[at:at + n] = bytes(len(out[at:at + n]))
    elif how == "insert":
        at = rng.randrange(len(out))
        out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 50)))
    else:  # a character of the header (or the first lines) changed
        for _ in range(rng.randint(1, 3)):
            out[rng.randrange(min(len(out), 300))] = rng.choice(b"0123456789 \n-+e.,{}[]\":nanNaNinfxyz")
    return bytes(out)


def _cases(originals, suffix_of):
    cases = []
    for fmt in sorted(originals):
        for seed in range(SEEDS_PER_FORMAT):
            how = DAMAGE[seed % len(DAMAGE)]
            cases.append(("{}_{}_{}".format(fmt, how, seed), suffix_of(fmt), fmt, how, seed))
    return cases


MESH_FORMATS = ("ply", "obj", "stl", "vtk", "vtp")
MESH_CASES = _cases(MESH_FORMATS, lambda fmt: "." + fmt)


@pytest.fixture(scope="module")
def mesh_outcomes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("damaged_meshes")
    originals = {}
    for fmt in MESH_FORMATS:
        path = folder / ("good." + fmt)
        write_mesh(_mesh(), path)
        originals[fmt] = path.read_bytes()
    jobs = []
    for case, suffix, fmt, how, seed in MESH_CASES:
        path = folder / (case + suffix)
        path.write_bytes(damaged(originals[fmt], how, random.Random(seed * 7919 + len(fmt))))
        jobs.append([case, str(path)])
    return read_in_children(jobs)


@pytest.mark.parametrize("case", [c[0] for c in MESH_CASES])
def test_a_damaged_mesh_reads_or_gives_one_line(case, mesh_outcomes):
    outcome = mesh_outcomes.get(case)
    assert outcome is not None, "the child process never reached " + case
    assert outcome["status"] in ("ok", "error"), outcome  # not a crash, a hang or another exception
    if outcome["status"] == "ok":
        assert outcome["finite"] and outcome["indices"], outcome
    else:
        message = outcome["message"]
        assert "\n" not in message and message.startswith(outcome["path"] + ": "), message
    assert outcome["stderr"] == "", outcome  # VTK's own messages stay quiet


LANDMARK_FORMATS = {"mrk_json": ".mrk.json", "fcsv": ".fcsv", "csv": ".csv", "txt": ".txt"}
LANDMARK_CASES = _cases(LANDMARK_FORMATS, LANDMARK_FORMATS.get)


def _landmarks() -> Landmarks:
    labels = ["n", "prn", "sn", "ls", "sto", "li", "en_R", "en_L", "ch_R", "ch_L"]
    points = np.array([[math.sin(k) * 30.0, math.cos(k) * 40.0, 10.0 + k] for k in range(len(labels))])
    points[4] = np.nan  # one landmark the scan does not show
    return Landmarks(labels, points, np.linspace(0.2, 0.9, len(labels)), None, "mm")


@pytest.mark.parametrize("case,suffix,fmt,how,seed", LANDMARK_CASES, ids=[c[0] for c in LANDMARK_CASES])
def test_a_damaged_landmark_file_reads_or_gives_one_line(tmp_path, case, suffix, fmt, how, seed):
    good = write_landmarks(_landmarks(), tmp_path / ("good" + suffix))
    path = tmp_path / (case + suffix)
    path.write_bytes(damaged(good.read_bytes(), how, random.Random(seed * 104729 + len(fmt))))
    try:
        lms = read_landmarks(path)
    except PalnetError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith(str(path) + ": "), message
        return
    assert len(lms.labels) == len(lms.points) > 0 and lms.points.shape[1:] == (3,)
    assert all(isinstance(lab, str) and lab for lab in lms.labels)
    defined = np.isfinite(lms.points).all(axis=1)
    assert defined.any() and (defined | np.isnan(lms.points).all(axis=1)).all()  # whole points or none


def test_a_row_cut_before_its_label_or_a_blank_label_is_named(tmp_path):
    """A .fcsv row that ends before its label column (a file cut short) had been read as a
    landmark with the empty label; a control point with a blank label cannot be matched to
    any landmark either. Both name the line; a columns line without y names that."""
    good = write_landmarks(_landmarks(), tmp_path / "good.fcsv").read_text()
    cut = good[:good.rindex(",0,0,0,1,1,1,0,")]  # the last row, up to its z value
    path = tmp_path / "cut.fcsv"
    path.write_text(cut)
    with pytest.raises(PalnetError, match=r"line \d+: expected 14 comma-separated values, found 4 \(is the line cut"):
        read_landmarks(path)
    path.write_text(good.replace(",ls,", ", ,"))
    with pytest.raises(PalnetError, match=r"line \d+: a landmark without a label"):
        read_landmarks(path)
    path.write_text(good.replace("columns = id,x,y,z", "columns = id,x,q,z"))
    with pytest.raises(PalnetError, match=r"line \d+: the columns line names no y column"):
        read_landmarks(path)
    blank = json.loads(write_landmarks(_landmarks(), tmp_path / "good.mrk.json").read_text())
    blank["markups"][0]["controlPoints"][2]["label"] = ""
    path = tmp_path / "blank.mrk.json"
    path.write_text(json.dumps(blank))
    with pytest.raises(PalnetError, match=r"a landmark without a label"):
        read_landmarks(path)
