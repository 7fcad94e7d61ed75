"""Model files and training configurations as hostile input: every size is checked before it
is read, every metadata number the pipeline uses is in range, and every refusal is one line
naming the file and the entry or field."""
import io
import json
import os
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from palnet import PalnetError
from palnet.engine import NetworkConfig, expected_weight_shapes
from palnet.modelfile import METADATA_RANGES, Model, load_model, save_model

CONFIG = NetworkConfig(n_landmarks=5, patch_size=100, widths=(8, 16), pools=(5, 5), fc=16)
LABELS = ["a", "b", "c", "d", "e"]


def prior(scale=1.0):
    return {"mean": [[0.0, 1.0, 2.0]] * 5, "bias": [[0.1, 0.0, -0.1]] * 5,
            "gain": (np.eye(15) * 0.5 * scale).tolist()}


METADATA = {
    "protocol": {"labels": LABELS}, "units": "mm",
    "template": [[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]],
    "mean_landmarks": [[0.0, 1.5, -2.25]] * 5, "patch": {"spacing_mm": 1.5, "scale_mm": 20.0},
    "refine_steps": 2,
    "landmark_modes": {"coef_mean": [0.0, 0.1], "landmark_mean": [[0.0, 1.0, 2.0]] * 5,
                       "modes": np.zeros((2, 5, 3)).tolist()},
    "shape_prior": prior(), "second_round": {"refine_steps": 2, "shape_prior": prior()},
    "confidence": {"spread_mm": [0.5, 1.0, 2.0], "p_within_2mm": [0.9, 0.7, 0.4], "n": 30},
}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    rng = np.random.default_rng(0)
    weights = {k: rng.normal(size=s).astype(np.float32) for k, s in expected_weight_shapes(CONFIG).items()}
    path = tmp_path_factory.mktemp("good") / "good.npz"
    save_model(path, Model(weights, CONFIG, METADATA))
    return path


def entries(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def with_metadata(good, path, change):
    """A copy of ``good`` whose metadata has gone through ``change(meta)``."""
    e = entries(good)
    meta = json.loads(str(e["metadata"]))
    change(meta)
    np.savez(path, **dict(e, metadata=np.array(json.dumps(meta))))
    return path


def refused(path, *parts):
    with pytest.raises(PalnetError) as info:
        load_model(path)
    text = str(info.value)
    assert "\n" not in text and os.path.basename(str(path)) in text, text
    for part in parts:
        assert part in text, (part, text)
    return text


def test_the_good_file_loads(good):
    model = load_model(good)
    assert model.metadata["second_round"]["refine_steps"] == 2 and model.config == CONFIG


# ---------------------------------------------------------------- sizes before reading

def _npy_header(shape, descr="<f4"):
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
    return out.getvalue()  # magic string, version, header


def test_a_1gib_entry_in_a_small_file_is_refused_before_it_is_read(good, tmp_path):
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as dst:
        for info in src.infolist():
            if info.filename != "w/fc1.weight.npy":
                dst.writestr(info.filename, src.read(info))
        with dst.open("w/fc1.weight.npy", "w", force_zip64=True) as f:
            f.write(_npy_header((2 ** 28,)))
            zeros = bytes(2 ** 26)
            for _ in range(16):
                f.write(zeros)
    assert os.path.getsize(path) < 8 * 2 ** 20
    tracemalloc.start()
    t0 = time.perf_counter()
    text = refused(path, "entry w/fc1.weight holds {} bytes".format(len(_npy_header((2 ** 28,))) + 2 ** 30),
                   "not read")
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 2.0 and peak < 64 * 2 ** 20, (seconds, peak, text)


def test_a_3gb_entry_declared_in_the_zip_directory_is_refused_unread(good, tmp_path):
    data = bytearray(good.read_bytes())
    at = data.rindex(b"w/fc2.weight.npy") - 46  # its record in the central directory, after the data
    assert data[at:at + 4] == b"PK\x01\x02"
    data[at + 24:at + 28] = (3 * 10 ** 9).to_bytes(4, "little")  # uncompressed size
    (tmp_path / "big.npz").write_bytes(bytes(data))
    refused(tmp_path / "big.npz", "entry w/fc2.weight holds 3000000000 bytes", "not read")


def test_an_npy_header_declaring_1e10_elements_is_refused_not_allocated(good, tmp_path):
    path = tmp_path / "header.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            payload = src.read(info)
            if info.filename == "w/out.bias.npy":
                payload = _npy_header((10 ** 10,)) + bytes(60)
            dst.writestr(info.filename, payload)
    refused(path, "entry w/out.bias declares shape (10000000000,)", "40000000000 bytes", "holds 60 bytes")


def test_wrong_weight_shapes_are_refused_from_the_header(good, tmp_path):
    path = tmp_path / "shape.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            payload = src.read(info)
            if info.filename == "w/fc2.bias.npy":
                payload = _npy_header((4, 4)) + bytes(64)
            dst.writestr(info.filename, payload)
    refused(path, "weight fc2.bias has shape (4, 4) but the network configuration needs (16,)")


def test_metadata_too_large_too_deep_duplicated_or_too_many_entries(good, tmp_path):
    e = entries(good)
    path = tmp_path / "deep.npz"
    np.savez(path, **dict(e, metadata=np.array('{"format": ' + "[" * 100_000 + "]" * 100_000 + "}")))
    refused(path, "metadata is not valid JSON (nested too deeply)")
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as dst:
        for info in src.infolist():
            if info.filename != "metadata.npy":
                dst.writestr(info.filename, src.read(info))
        dst.writestr("metadata.npy", _npy_header((), "<U17000000") + bytes(68_000_000))
    refused(path, "entry metadata holds", "not read")
    path = tmp_path / "twice.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
        with pytest.warns(UserWarning, match="Duplicate name"):  # zipfile allows it, and so might a file
            dst.writestr("w/out.bias.npy", src.read("w/out.bias.npy"))
    refused(path, "entry w/out.bias is in the file twice")
    path = tmp_path / "many.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
        for i in range(1001):
            dst.writestr("junk/{}".format(i), b"")
    refused(path, "holds {} entries, more than a model file may (1000)".format(len(entries(good)) + 1001))


# ---------------------------------------------------------------- metadata in range

def _set(dotted, value):
    def change(meta):
        *parents, last = dotted.split(".")
        node = meta
        for p in parents:
            node = node[p]
        node[last] = value
    return change


BAD_METADATA = {
    "refine_steps": (1_000_000, "metadata field refine_steps must be an integer from 1 to 10, not 1000000"),
    "refine_steps.text": ("3", "metadata field refine_steps must be an integer"),
    "second_round.refine_steps": (10 ** 6, "metadata field second_round.refine_steps must be an integer from 1 to 10"),
    "patch.spacing_mm": (0.001, "metadata field patch.spacing_mm must be a number from 0.25 to 10, not 0.001"),
    "patch.scale_mm": ("x", "metadata field patch.scale_mm must be a number"),
    "template": ([[0, 0, float("nan")]] * 4, "metadata field template holds NaN"),
    "mean_landmarks": ([[0, 0, 0]] * 4, "metadata field mean_landmarks must be a list of numbers of shape (5, 3)"),
    "landmark_modes.modes": ([[[1e9, 0, 0]] * 5] * 2, "metadata field landmark_modes.modes must hold numbers from"),
    "shape_prior.gain": ([[0.0]], "metadata field shape_prior.gain must be a list of numbers of shape (15, 15)"),
    "second_round.shape_prior.bias": ([[5000.0, 0, 0]] * 5, "metadata field second_round.shape_prior.bias"),
    "confidence.p_within_2mm": ([5.0, 0.7, 0.4], "confidence.p_within_2mm must hold numbers from 0 to 1, not 5"),
    "confidence.spread_mm": ([2.0, 1.0, 0.5], "metadata field confidence.spread_mm must be non-decreasing"),
    "protocol.labels": (["a", "a", "b", "c", "d"], "metadata field protocol.labels must be a list of 5 different"),
    "units": ("cm", "metadata field units must be \"mm\""),
    "network.patch_size": (100_000, "metadata field network.patch_size must be an integer from 1 to 2048"),
    "network.in_channels": (4, "metadata field network.in_channels must be 3, not 4"),
}


@pytest.mark.parametrize("case", sorted(BAD_METADATA))
def test_metadata_out_of_range_is_refused_naming_file_and_field(good, tmp_path, case):
    value, message = BAD_METADATA[case]
    path = with_metadata(good, tmp_path / "bad.npz", _set(case.split(".text")[0], value))
    refused(path, message)


def test_missing_parts_of_a_metadata_record_are_named(good, tmp_path):
    path = with_metadata(good, tmp_path / "part.npz", lambda m: m["landmark_modes"].pop("landmark_mean"))
    refused(path, "metadata field landmark_modes.landmark_mean is missing")
    path = with_metadata(good, tmp_path / "round.npz", lambda m: m["second_round"].pop("shape_prior"))
    refused(path, "metadata field second_round.shape_prior is missing")
    path = with_metadata(good, tmp_path / "names.npz", lambda m: m.pop("protocol"))
    refused(path, "metadata field protocol.labels is missing")


def test_save_refuses_what_load_would_refuse(good, tmp_path):
    model = load_model(good)
    model.metadata["refine_steps"] = 1_000_000
    with pytest.raises(PalnetError, match="never.npz: metadata field refine_steps"):
        save_model(tmp_path / "never.npz", model)
    assert not (tmp_path / "never.npz").exists()


def test_confidence_stays_within_0_and_1_for_a_model_never_loaded():
    from palnet.priors import landmark_confidence
    weights = {k: np.zeros(s, np.float32) for k, s in expected_weight_shapes(CONFIG).items()}
    meta = dict(METADATA, confidence={"spread_mm": [0.5, 1.0], "p_within_2mm": [5.0, -3.0]})
    conf = landmark_confidence(np.array([0.1, 0.75, 3.0]), Model(weights, CONFIG, meta))
    assert conf.min() >= 0.0 and conf.max() <= 1.0
    meta["confidence"] = {"spread_mm": [0.5]}
    with pytest.raises(PalnetError, match="unusable confidence table"):
        landmark_confidence(np.array([0.1]), Model(weights, CONFIG, meta, source="code.npz"))


def test_the_shipped_model_loads_within_the_ranges_and_predicts_as_before():
    """Identical to reading it the plain NumPy way, and the same prediction from both."""
    from palnet.mesh_io import read_mesh
    from palnet.pipeline import predict
    from palnet.resources import default_model_path, sample_scan_path
    path = default_model_path()
    model = load_model(path)
    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(str(f["metadata"]))
        plain = Model({k[2:]: f[k] for k in f.files if k.startswith("w/")},
                      NetworkConfig.from_dict(meta.pop("network")), meta)
    assert model.metadata == plain.metadata
    assert all(np.array_equal(model.weights[k], plain.weights[k]) for k in plain.weights)
    assert model.metadata["refine_steps"] <= METADATA_RANGES["refine_steps"][1]
    mesh = read_mesh(sample_scan_path())
    a, b = predict(mesh, model), predict(mesh, plain)
    np.testing.assert_array_equal(a.landmarks.points, b.landmarks.points)
    np.testing.assert_array_equal(a.landmarks.confidence, b.landmarks.confidence)


# ---------------------------------------------------------------- training configuration

def test_a_config_file_with_a_bad_setting_is_one_line_naming_file_and_key(tmp_path):
    from palnet.train import load_config, merge_config, train
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"epochs": "lots"}))
    for attempt in (lambda: load_config(cfg), lambda: train(tmp_path, tmp_path / "m.npz", str(cfg))):
        with pytest.raises(PalnetError) as info:
            attempt()
        text = str(info.value)
        assert "\n" not in text and "cfg.json" in text and "'epochs'" in text and "'lots'" in text, text
    for bad, key in (({"refine_steps": 10 ** 6}, "'refine_steps'"), ({"lr": "fast"}, "'lr'"),
                     ({"jitter": {"near_fraction": 2}}, "'jitter.near_fraction'"),
                     ({"network": {"widths": [32, "wide"]}}, "'network.widths'"),
                     ({"loss_weights": [0, 0]}, "'loss_weights'"), ({"shape_prior": "yes"}, "'shape_prior'"),
                     ({"patch": {"spacing_mm": 0.0}}, "'patch.spacing_mm'")):
        with pytest.raises(PalnetError) as info:
            merge_config(bad, "c.json")
        text = str(info.value)
        assert "\n" not in text and text.startswith("c.json: ") and key in text, text
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(PalnetError, match="list.json: a training configuration must be a JSON object"):
        load_config(tmp_path / "list.json")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(PalnetError, match="deep.json: training configuration is not valid JSON"):
        load_config(tmp_path / "deep.json")


def test_palnet_train_with_a_bad_config_fails_in_one_line(tmp_path, capsys):
    from palnet.cli import main
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"epochs": "lots"}))
    assert main(["train", str(tmp_path), "-o", str(tmp_path / "m.npz"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'epochs'" in err and "'lots'" in err and "Traceback" not in err, err
