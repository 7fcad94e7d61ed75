"""Automatic alignment and unit detection on synthetic scans in any pose, position and unit."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from palnet import PalnetError
from palnet.align import Alignment, align_scan, detect_units, rotation_grid
from palnet.resources import face_template_path


@pytest.fixture(scope="module")
def template():
    with np.load(face_template_path(), allow_pickle=False) as d:
        return d["points"].astype(np.float64), d["modes"].astype(np.float64)


@pytest.fixture(scope="module")
def ict(ict_path):
    from palnet.synth import load_ict
    return load_ict(ict_path)


def _angle_to_truth(alignment: Alignment, meta: dict) -> float:
    pose = np.asarray(meta["pose_matrix_mm"])[:3, :3]  # ICT (canonical) -> scan
    return float(np.degrees(Rotation.from_matrix(alignment.rotation @ pose).magnitude()))


@pytest.mark.parametrize("pose,seeds", [("realistic", range(1100, 1104)), ("any", range(1200, 1206))])
def test_alignment_recovers_the_pose(ict, template, pose, seeds):
    from palnet.synth import generate_scan
    for seed in seeds:
        scan, lms, meta = generate_scan(seed, ict, pose=pose)
        a = align_scan(scan.vertices, template[0], modes=template[1])
        # A neutral template fitted to a different face leaves a few degrees; a flip is 180.
        assert _angle_to_truth(a, meta) < 15.0, (seed, _angle_to_truth(a, meta))
        assert a.rms_mm < 5.0
        # landmarks land near the template's face: nasal tip in front, chin below
        can = a.to_canonical(lms.points)
        assert can[lms.labels.index("prn"), 2] > can[lms.labels.index("t_R"), 2] + 40
        assert can[lms.labels.index("me"), 1] < can[lms.labels.index("n"), 1] - 60


def test_alignment_round_trip():
    a = Alignment(rotation=Rotation.from_euler("xyz", [10, -40, 170], degrees=True).as_matrix(),
                  translation=np.array([5.0, -3.0, 100.0]))
    p = np.random.default_rng(0).normal(size=(20, 3)) * 50
    np.testing.assert_allclose(a.to_scan(a.to_canonical(p)), p, atol=1e-9)
    np.testing.assert_allclose(a.matrix[:3, :3], a.rotation)


def test_rotation_grid_covers_so3():
    grid = rotation_grid()
    assert np.allclose(np.linalg.det(grid), 1.0)
    probe = Rotation.random(500, random_state=3).as_matrix()
    cos = (np.einsum("aij,bij->ab", probe, grid).max(axis=1) - 1) / 2
    assert np.degrees(np.arccos(np.clip(cos, -1, 1))).max() < 16.0


@pytest.mark.parametrize("units,factor", [("mm", 1.0), ("cm", 0.1), ("m", 0.001)])
def test_detect_units(ict, units, factor):
    from palnet.synth import generate_scan
    for seed in (1300, 1301, 1302):
        scan, _, _ = generate_scan(seed, ict)
        assert detect_units(scan.vertices * factor) == units


def test_too_few_points_is_a_clear_error(template):
    with pytest.raises(PalnetError):
        align_scan(np.zeros((3, 3)), template[0])
