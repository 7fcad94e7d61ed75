"""Read mesh files in child processes with their memory limited, for the tests of hostile and
damaged files: a crash, a hang or an exception other than PalnetError costs only the file it
happened on, and the next child goes on from the file after it.

Each outcome is {"status": "ok" | "error" | "exception" | "crash" | "hang", ...}: a file that
reads also says whether its points are finite and its triangles index them ("finite",
"indices"); one that fails gives its "message"; "stderr" holds what the reader printed there.
"""
import json
import os
import subprocess
import sys

import palnet

CHILD_SECONDS = 120.0
CHILD_MEMORY = 4 << 30  # bytes of address space: an attempt to allocate gigabytes fails fast

CHILD = r"""
import json, os, sys, tempfile
try:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
except (ImportError, ValueError, OSError):
    pass
import numpy as np
from palnet.errors import PalnetError
from palnet.mesh_io import read_mesh
jobs = json.load(sys.stdin)
err = tempfile.TemporaryFile()
saved = os.dup(2)
for case, path in jobs:
    print("START", case, flush=True)
    err.seek(0)
    err.truncate()
    os.dup2(err.fileno(), 2)
    try:
        mesh = read_mesh(path)
        v, t = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
        result = {"status": "ok", "vertices": mesh.n_vertices, "triangles": mesh.n_triangles,
                  "finite": bool(np.isfinite(v).all()),
                  "indices": bool(t.size == 0 or (t.min() >= 0 and t.max() < len(v)))}
    except PalnetError as e:
        result = {"status": "error", "message": str(e)}
    except BaseException as e:
        result = {"status": "exception", "message": "{}: {}".format(type(e).__name__, e)}
    sys.stderr.flush()
    os.dup2(saved, 2)
    err.seek(0)
    result["stderr"] = err.read().decode("utf-8", "replace")
    print("RESULT", json.dumps([case, result]), flush=True)
"""


def child_env() -> dict:
    """The environment of the children: this palnet first on their path."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(palnet.__file__)))] +
        ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))


def read_in_children(jobs, env=None) -> dict:
    """Read each [case, path] of ``jobs``: {case: outcome, with its "path"}."""
    env = child_env() if env is None else env
    paths = dict((case, path) for case, path in jobs)
    outcomes = {}
    while jobs:
        try:
            done = subprocess.run([sys.executable, "-c", CHILD, str(CHILD_MEMORY)], input=json.dumps(jobs).encode(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=CHILD_SECONDS, env=env)
            out, err, code = done.stdout, done.stderr, done.returncode
        except subprocess.TimeoutExpired as e:
            out, err, code = e.stdout or b"", e.stderr or b"", "hang"
        started = None
        for line in out.decode("utf-8", "replace").splitlines():
            if line.startswith("START "):
                started = line[6:]
            elif line.startswith("RESULT "):
                case, result = json.loads(line[7:])
                outcomes[case] = dict(result, path=paths[case])
                started = None
        if started is None:
            if code != 0:
                raise RuntimeError("the reading process failed ({}): {}".format(
                    code, err.decode("utf-8", "replace")[-2000:]))
            break
        outcomes[started] = {"status": "hang" if code == "hang" else "crash", "returncode": code,
                             "path": paths[started]}
        jobs = jobs[[case for case, _ in jobs].index(started) + 1:]
    return outcomes
