"""The benchmark tool's speed mode: `palnet predict` timed in a fresh process on one core."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_speed_mode_times_a_fresh_prediction(tmp_path):
    from palnet.resources import sample_scan_path
    out = tmp_path / "speed.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark.py"), "--speed", str(sample_scan_path()),
                           "--repeats", "1", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "imports to landmarks written" in proc.stdout
    res = json.loads(out.read_text())
    assert res["repeats"] == 1 and res["torch_imported"] is False and len(res["runs"]) == 1
    assert res["runs"][0]["rc"] == 0 and res["median_seconds"] > 0 and res["peak_mib"] > 0
