"""A batch never loses or replaces what the user had, and always ends with its summary.

Each case sets up what a user meets (a picture already there, two scans with one name, a
second run, a stop signal, a crashing reader, a killed run) and checks the clean outcome.
Synthetic files stand in where no prediction is needed; the sample scan (or a crop of it
that is not a face) where one is.
"""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from palnet import batch
from palnet.batch import LOCK_NAME, SUMMARY_FIELDS, SUMMARY_NAME, find_meshes, output_paths, predict_files
from palnet.cli import main
from palnet.landmark_io import read_landmarks
from palnet.mesh_io import polydata_to_mesh, read_mesh, write_mesh
from palnet.resources import sample_scan_path
from palnet.datatypes import Mesh

PACKAGE_DIR = Path(batch.__file__).resolve().parent.parent
POSIX = os.name == "posix"
PROC = Path("/proc/self/stat").exists()


@pytest.fixture(scope="module")
def face():
    return read_mesh(sample_scan_path())


def _not_a_face(face: Mesh, path: Path) -> Path:
    """The forehead of the sample: a third of its surface, rejected as not a face."""
    top = face.vertices[:, 1] > face.vertices[:, 1].mean() + 20
    triangles = face.triangles[top[face.triangles].all(axis=1)]
    write_mesh(Mesh(face.vertices[top], (np.cumsum(top) - 1)[triangles]), path)
    return path


def _junk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not a mesh\n")
    return path


def _damaged_ply(path: Path) -> Path:
    """A binary PLY whose first face claims 255 corners: VTK's reader crashes on it, if
    palnet's own checks do not refuse it first."""
    import vtk
    s = vtk.vtkSphereSource()
    s.Update()
    mesh = polydata_to_mesh(s.GetOutput())
    write_mesh(mesh, path)
    data = bytearray(path.read_bytes())
    first_face = data.index(b"end_header\n") + len(b"end_header\n") + 12 * mesh.n_vertices
    assert data[first_face] == 3  # the corner count of the first triangle
    data[first_face] = 0xFF
    path.write_bytes(bytes(data))
    return path


def _summary(out: Path):
    with open(out / SUMMARY_NAME, newline="") as f:
        return list(csv.DictReader(f))


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def _children(pid: int):
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path("/proc/{}/stat".format(pid)).read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_for(condition, seconds: float = 30.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def _start_batch(scans: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PACKAGE_DIR), os.environ.get("PYTHONPATH", "")]))
    # As from a terminal: a run started from a background shell inherits SIGINT ignored, and
    # palnet keeps a signal its parent ignores ignored (nohup); these tests send it on purpose.
    return subprocess.Popen([sys.executable, "-m", "palnet", "predict", str(scans), "-o", str(out), "-q"] + list(extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _batch_workers(run: subprocess.Popen, out: Path, n: int):
    """The batch's worker processes, once it holds its lock (other children may come and go before)."""
    def found():
        kids = _children(run.pid) if (out / LOCK_NAME).exists() else []
        return kids if len(kids) >= n else None
    return _wait_for(found)


def test_outputs_mirror_the_input_folders_and_never_coincide(tmp_path):
    data = tmp_path / "data"
    for name in ("a/face.ply", "b/face.ply", "x.ply", "x.stl", "S1/scan.ply", "S1.ply", "deep/er/y.obj"):
        _junk(data / name)
    out = tmp_path / "out"
    meshes = find_meshes([str(data), str(data / "x.ply")])  # x.ply named twice is one scan
    got = {m.relative_to(data).as_posix(): o.relative_to(out).as_posix() for m, o in
           zip(meshes, output_paths(meshes, [str(data), str(data / "x.ply")], out, "fcsv"))}
    assert got == {"a/face.ply": "a/face.fcsv", "b/face.ply": "b/face.fcsv", "deep/er/y.obj": "deep/er/y.fcsv",
                   "S1/scan.ply": "S1.fcsv", "S1.ply": "S1_ply.fcsv", "x.ply": "x.fcsv", "x.stl": "x_stl.fcsv"}
    # named one by one, the files keep the folders they share
    files = [str(data / "a" / "face.ply"), str(data / "b" / "face.ply")]
    assert [o.relative_to(out).as_posix() for o in output_paths([Path(f) for f in files], files, out, "fcsv")] == \
        ["a/face.fcsv", "b/face.fcsv"]


def test_same_named_scans_and_an_existing_picture_are_all_kept(tmp_path, face, capsys):
    scans = tmp_path / "in"
    (scans / "a").mkdir(parents=True)
    (scans / "b").mkdir()
    write_mesh(face, scans / "a" / "face.ply")
    write_mesh(Mesh(face.vertices + [10.0, 0, 0], face.triangles), scans / "b" / "face.ply")
    pics = tmp_path / "pics"
    (pics / "a").mkdir(parents=True)
    (pics / "a" / "pic_face.png").write_text("mine")
    out = tmp_path / "out"
    argv = ["predict", str(scans), "-o", str(out), "-q", "--png", str(pics / "pic.png")]
    assert main(argv) == 0  # every scan ok
    a, b = (read_landmarks(out / d / "face.mrk.json").points for d in ("a", "b"))
    assert np.allclose((b - a).mean(axis=0), [10, 0, 0], atol=0.5)  # each scan its own file
    assert (pics / "a" / "pic_face.png").read_text() == "mine"
    assert (pics / "b" / "pic_face.png").read_bytes()[:4] == b"\x89PNG"
    messages = {r["output"]: r["message"] for r in _summary(out)}
    assert "pic_face.png exists, kept" in messages[str(out / "a" / "face.mrk.json")]
    assert "exists" not in messages[str(out / "b" / "face.mrk.json")]
    before = {p: p.read_bytes() for p in (out / "a" / "face.mrk.json", out / "b" / "face.mrk.json")}
    assert main(argv) == 0  # a re-run keeps both
    assert [r["status"] for r in _summary(out)[-2:]] == ["skipped", "skipped"]
    assert all(p.read_bytes() == data for p, data in before.items())


def test_exit_status_and_rejected_scans(tmp_path, face, capsys):
    scan = _not_a_face(face, tmp_path / "forehead.ply")
    out = tmp_path / "out"
    assert main(["predict", str(scan), "-o", str(out), "-q"]) == 1
    row = _summary(out)[-1]
    assert row["status"] == "not a face" and row["output"] == "" and "--keep-rejected" in row["message"]
    assert not (out / "forehead.mrk.json").exists()
    picture = tmp_path / "mine.png"
    picture.write_text("mine")
    assert main(["predict", str(scan), "-o", str(out), "-q", "--keep-rejected", "--png", str(picture)]) == 1
    assert read_landmarks(out / "forehead.mrk.json").points.shape[1] == 3
    assert picture.read_text() == "mine"  # --png FILE never writes over a file
    assert "mine.png exists, kept" in _summary(out)[-1]["message"]
    assert main(["predict", str(_junk(tmp_path / "junk.ply")), "-o", str(out), "-q"]) == 1


def test_the_summary_keeps_earlier_runs_and_files(tmp_path, model):
    old_fields = [f for f in SUMMARY_FIELDS if f not in ("run", "template_coverage")]  # an earlier palnet's
    out = tmp_path / "out"
    out.mkdir()
    old = dict.fromkeys(old_fields, "")
    old.update(scan="earlier", status="ok", fit_rms_mm="1.234", message="from before")
    with open(out / SUMMARY_NAME, "w", newline="") as f:
        w = csv.DictWriter(f, old_fields)
        w.writeheader()
        w.writerow(old)
    junk = str(_junk(tmp_path / "junk.ply"))
    predict_files([junk], out, model)
    predict_files([junk], out, model)
    rows = _summary(out)
    assert [r["scan"] for r in rows] == ["earlier", "junk", "junk"]
    assert rows[0]["fit_rms_mm"] == "1.234" and rows[0]["message"] == "from before" and rows[0]["run"] == ""
    assert rows[1]["run"] and rows[2]["run"] and rows[1]["run"] != rows[2]["run"]
    # a file of another kind under that name is moved aside, not overwritten
    other = tmp_path / "other"
    other.mkdir()
    (other / SUMMARY_NAME).write_text("my own,table\n1,2\n")
    predict_files([junk], other, model)
    assert (other / (SUMMARY_NAME + ".1")).read_text() == "my own,table\n1,2\n"
    assert [r["scan"] for r in _summary(other)] == ["junk"]


@pytest.mark.skipif(not POSIX, reason="pids of ended processes")
def test_a_lock_keeps_a_second_run_out_and_a_stale_one_is_taken_over(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    junk = str(_junk(tmp_path / "junk.ply"))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text("{}\n".format(other.pid))
        assert main(["predict", junk, "-o", str(out), "-q"]) == 2
        line = _one_line(capsys.readouterr().err)
        assert "another palnet run (process {})".format(other.pid) in line and LOCK_NAME in line
        assert (out / LOCK_NAME).read_text() == "{}\n".format(other.pid) and not (out / SUMMARY_NAME).exists()
    finally:
        other.kill()
        other.wait()
    # that run is gone now; and a lock with this very pid is from a run before a restart
    for stale in (other.pid, os.getpid()):
        (out / LOCK_NAME).write_text("{}\n".format(stale))
        assert main(["predict", junk, "-o", str(out), "-q"]) == 1  # the junk file failed
        assert not (out / LOCK_NAME).exists()
    assert len(_summary(out)) == 2


def test_output_naming_a_file_is_one_line(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    for out in (target, target / "sub"):
        assert main(["predict", str(sample_scan_path()), "-o", str(out), "-q"]) == 2
        assert "notes.txt" in _one_line(capsys.readouterr().err)
    assert target.read_text() == "keep me"


def _reader_crash_is_real(path: Path) -> bool:
    pid = os.fork()
    if pid == 0:
        try:
            read_mesh(path)
        finally:
            os._exit(0)
    return os.WIFSIGNALED(os.waitpid(pid, 0)[1])


@pytest.fixture
def quiet_crashes():
    """No Python fault report from the crashes this test causes on purpose (forked processes
    inherit the test runner's fault handler)."""
    import faulthandler
    enabled = faulthandler.is_enabled()
    faulthandler.disable()
    yield
    if enabled:
        faulthandler.enable(file=sys.__stderr__)


@pytest.mark.skipif(not POSIX, reason="workers are forked")
def test_a_crashing_reader_with_one_job_costs_only_its_scan(tmp_path, face, monkeypatch, quiet_crashes):
    scans = tmp_path / "scans"
    _junk(scans / "a.ply")
    damaged = _damaged_ply(scans / "b_damaged.ply")
    _not_a_face(face, scans / "c.ply")
    if not _reader_crash_is_real(damaged):
        # The reader has learnt to refuse this file: crash where it would have, so that
        # the isolation is still what is tested.
        real = batch.predict_one

        def crashing(mesh_path, *args, **kwargs):
            if Path(mesh_path).name == damaged.name:
                os.kill(os.getpid(), signal.SIGSEGV)
            return real(mesh_path, *args, **kwargs)
        monkeypatch.setattr(batch, "predict_one", crashing)
    out = tmp_path / "out"
    assert main(["predict", str(scans), "-o", str(out), "-q"]) == 1  # --jobs 1, the default
    rows = _summary(out)
    assert [(r["scan"], r["status"]) for r in rows] == [("a", "error"), ("b_damaged", "error"), ("c", "not a face")]
    assert batch.CRASHED in rows[1]["message"] and str(damaged) in rows[1]["message"]
    assert not (out / LOCK_NAME).exists()


def test_an_interrupted_batch_lists_every_scan_and_stops_its_workers(tmp_path, model):
    import multiprocessing
    scans = tmp_path / "scans"
    for name in ("a", "b", "c", "d"):
        _junk(scans / (name + ".ply"))

    def interrupt(done, total, scan, error):
        raise KeyboardInterrupt

    # what a worker killed while writing a scan's landmarks would leave (all 4 are handed out at once)
    partial = {name: tmp_path / "out" / ".{}.mrk.json.0123abcd.tmp".format(name) for name in "abcd"}
    (tmp_path / "out").mkdir()
    for path in partial.values():
        path.write_text("{")
    with pytest.raises(KeyboardInterrupt):
        predict_files([str(scans)], tmp_path / "out", model, progress=interrupt, jobs=2)
    assert not multiprocessing.active_children()
    rows = _summary(tmp_path / "out")
    assert [r["scan"] for r in rows] == ["a", "b", "c", "d"]
    # the first scan done was the last: the run stopped while it was reported
    assert sorted(r["status"] for r in rows) == ["error", "not run", "not run", "not run"]
    assert not [r["scan"] for r in rows if r["status"] == "not run" and partial[r["scan"]].exists()]
    assert not (tmp_path / "out" / LOCK_NAME).exists()


@pytest.mark.skipif(not PROC, reason="reads processes from /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_still_writes_the_summary(tmp_path, face, signum, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    names = ["s{}".format(i) for i in range(1, 9)]  # enough that the run is still busy when the signal comes
    for name in names:
        write_mesh(face, scans / (name + ".ply"))
    out = tmp_path / "out"
    run = _start_batch(scans, out)
    try:
        workers = _batch_workers(run, out, 1)
        if signum == signal.SIGTERM:  # a second run meanwhile is told so in one line
            assert main(["predict", str(scans), "-o", str(out), "-q"]) == 2
            assert "another palnet run (process {})".format(run.pid) in _one_line(capsys.readouterr().err)
        run.send_signal(signum)
        _, err = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 128 + signum, err
    assert "stopped by " + signal.Signals(signum).name in _one_line(err)
    rows = _summary(out)
    assert [r["scan"] for r in rows] == names
    assert {r["status"] for r in rows} <= {"ok", "not run"} and rows[-1]["status"] == "not run"
    assert not (out / LOCK_NAME).exists()
    assert not [w for w in workers if _alive(w)]


@pytest.mark.skipif(not PROC, reason="reads processes from /proc")
def test_workers_end_with_a_killed_parent(tmp_path, face):
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("s1", "s2", "s3", "s4"):
        write_mesh(face, scans / (name + ".ply"))
    out = tmp_path / "out"
    run = _start_batch(scans, out, "--jobs", "2")
    try:
        workers = _batch_workers(run, out, 2)
    finally:
        run.kill()  # kill -9
        run.communicate()
    _wait_for(lambda: not [w for w in workers if _alive(w)], 10)
    written = sorted(out.rglob("*.mrk.json"))
    time.sleep(1.5)
    assert sorted(out.rglob("*.mrk.json")) == written  # nobody goes on writing
    # the lock the killed run left behind is taken over by the next run
    assert (out / LOCK_NAME).exists()
    assert main(["predict", str(_junk(tmp_path / "junk.ply")), "-o", str(out), "-q"]) == 1


def test_hidden_files_and_folders_are_no_scans(tmp_path):
    """A killed write's temporary mesh, macOS's ._ files and hidden folders are left out of a folder's scans."""
    from palnet.batch import find_meshes
    (tmp_path / "a").mkdir()
    (tmp_path / ".git").mkdir()
    for name in ("face.ply", "._face.ply", ".face.ply.1a2b3c4d.tmp.ply", "a/x.stl", ".git/y.ply", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in find_meshes([str(tmp_path)])] == ["a/x.stl", "face.ply"]
    # named on the command line, a hidden file is taken as asked
    assert find_meshes([str(tmp_path / "._face.ply")]) == [tmp_path / "._face.ply"]
