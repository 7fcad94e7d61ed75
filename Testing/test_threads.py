"""One BLAS thread per process unless asked: the command line sets it before NumPy loads."""
import os
import subprocess
import sys

import pytest

from palnet.cli import main

CHILD = """
import os, sys
import palnet.cli
assert "numpy" not in sys.modules, "importing the command line loaded NumPy"
n = palnet.cli.limit_threads({threads})
import numpy
print(n, os.environ["OPENBLAS_NUM_THREADS"], os.environ["OMP_NUM_THREADS"])
"""


def _child(threads, **env_extra):
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS") and k != "VECLIB_MAXIMUM_THREADS"}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", CHILD.format(threads=threads)], env=env, check=True,
                         stdout=subprocess.PIPE, universal_newlines=True).stdout.split()
    return [int(x) for x in out]


def test_one_thread_by_default_before_numpy_loads():
    assert _child(None) == [1, 1, 1]


def test_the_environment_or_the_option_decides_otherwise():
    assert _child(None, OMP_NUM_THREADS="3") == [3, 3, 3]
    assert _child(2, OMP_NUM_THREADS="3") == [2, 2, 2]


def test_a_bad_thread_count_is_one_line(capsys, tmp_path):
    assert main(["--threads", "0", "evaluate", "--pred", str(tmp_path), "--truth", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--threads" in err[0]


@pytest.fixture(autouse=True)
def _keep_environment():
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
