"""Model files round-trip exactly and every bad file is refused with one line naming it."""
import json
import os
import zipfile

import numpy as np
import pytest

from palnet import PalnetError
from palnet.engine import NetworkConfig, expected_weight_shapes
from palnet.modelfile import FORMAT_VERSION, Model, load_model, save_model

CONFIG = NetworkConfig(n_landmarks=5, patch_size=100, widths=(8, 16), pools=(5, 5), fc=16)
METADATA = {"protocol": {"labels": ["a", "b", "c", "d", "e"], "names": ["A", "B", "C", "D", "E"]},
            "mean_landmarks": [[0.0, 1.5, -2.25]] * 5, "units": "mm", "accuracy": {"mean_mm": 1.83}}


def make_model(seed=0):
    rng = np.random.default_rng(seed)
    weights = {k: rng.normal(size=s).astype(np.float32) for k, s in expected_weight_shapes(CONFIG).items()}
    return Model(weights, CONFIG, METADATA)


def raw_entries(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def write_npz(path, entries, **json_changes):
    """A model file whose metadata has ``json_changes`` applied (a value None removes the key)."""
    meta = json.loads(str(entries["metadata"]))
    for key, value in json_changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    np.savez(path, **dict(entries, metadata=np.array(json.dumps(meta))))


def refused(path, match):
    with pytest.raises(PalnetError, match=match) as info:
        load_model(path)
    text = str(info.value)
    assert "\n" not in text and os.path.basename(str(path)) in text
    return text


def test_round_trip(tmp_path):
    model = make_model()
    path = tmp_path / "model.npz"
    save_model(path, model)
    loaded = load_model(path)
    assert loaded.config == CONFIG and loaded.metadata == model.metadata
    assert loaded.metadata["format"] == "palnet-model" and loaded.metadata["format_version"] == FORMAT_VERSION
    assert list(loaded.weights) == list(model.weights)
    for k, v in model.weights.items():
        assert loaded.weights[k].dtype == np.float32 and np.array_equal(loaded.weights[k], v)
    assert loaded.source == str(path)
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]  # no temporary file left behind
    x = np.random.default_rng(1).normal(size=(5, 100, 3))
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))


def test_half_precision(tmp_path):
    model = make_model()
    save_model(tmp_path / "full.npz", model)
    save_model(tmp_path / "half.npz", model, half=True)
    assert raw_entries(tmp_path / "half.npz")["w/fc1.weight"].dtype == np.float16
    loaded = load_model(tmp_path / "half.npz")
    for k, v in model.weights.items():
        assert loaded.weights[k].dtype == np.float32
        np.testing.assert_allclose(loaded.weights[k], v, rtol=2 ** -11, atol=2 ** -24)
    assert os.path.getsize(tmp_path / "half.npz") < os.path.getsize(tmp_path / "full.npz")


def test_save_overwrites_atomically_and_refuses_bad_models(tmp_path):
    path = tmp_path / "model.npz"
    save_model(path, make_model(0))
    save_model(path, make_model(1))
    assert np.array_equal(load_model(path).weights["out.bias"], make_model(1).weights["out.bias"])
    broken = make_model()
    del broken.weights["fc2.bias"]
    with pytest.raises(PalnetError, match="model.npz: missing weight"):
        save_model(path, broken)
    big = make_model()
    big.weights["out.bias"][0] = 1e6
    with pytest.raises(PalnetError, match="float16 range"):
        save_model(path, big, half=True)
    with pytest.raises(PalnetError, match="cannot write model file"):
        save_model(tmp_path / "no" / "such" / "model.npz", make_model())
    assert np.array_equal(load_model(path).weights["out.bias"], make_model(1).weights["out.bias"])
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]


def test_numpy_metadata_is_stored_as_lists(tmp_path):
    model = make_model()
    model.metadata["mean_landmarks"] = np.arange(15, dtype=np.float64).reshape(5, 3)
    model.metadata["n_train"] = np.int64(42)
    save_model(tmp_path / "m.npz", model)
    meta = load_model(tmp_path / "m.npz").metadata
    assert meta["mean_landmarks"] == np.arange(15.0).reshape(5, 3).tolist() and meta["n_train"] == 42


def test_refuses_missing_file_folder_and_non_npz(tmp_path):
    refused(tmp_path / "nothere.npz", "model file not found")
    (tmp_path / "dir.npz").mkdir()
    refused(tmp_path / "dir.npz", "is a folder")
    (tmp_path / "text.npz").write_text("hello")
    refused(tmp_path / "text.npz", "not an .npz archive")
    np.save(tmp_path / "array.npy", np.zeros(3))
    refused(tmp_path / "array.npy", "not an .npz archive")
    save_model(tmp_path / "cut.npz", make_model())
    data = (tmp_path / "cut.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2] + data[-200:])
    refused(tmp_path / "cut.npz", "damaged model file")


def test_refuses_bad_metadata(tmp_path):
    save_model(tmp_path / "good.npz", make_model())
    entries = raw_entries(tmp_path / "good.npz")
    no_meta = {k: v for k, v in entries.items() if k != "metadata"}
    np.savez(tmp_path / "nometa.npz", **no_meta)
    refused(tmp_path / "nometa.npz", "no metadata entry")
    np.savez(tmp_path / "notjson.npz", **dict(entries, metadata=np.array("{format: palnet")))
    refused(tmp_path / "notjson.npz", "metadata is not valid JSON")
    np.savez(tmp_path / "list.npz", **dict(entries, metadata=np.array("[1, 2]")))
    refused(tmp_path / "list.npz", "not a JSON object")
    np.savez(tmp_path / "numbers.npz", **dict(entries, metadata=np.zeros(3)))
    refused(tmp_path / "numbers.npz", "metadata entry is not a JSON text")
    with zipfile.ZipFile(tmp_path / "rawzip.npz", "w") as z:
        z.writestr("metadata", "{}")
    refused(tmp_path / "rawzip.npz", "entry metadata is not a NumPy array")
    write_npz(tmp_path / "format.npz", entries, format="some-other-model")
    refused(tmp_path / "format.npz", "not a PALNet model file .format 'some-other-model'")
    write_npz(tmp_path / "newer.npz", entries, format_version=FORMAT_VERSION + 1)
    refused(tmp_path / "newer.npz", "newer than this palnet reads")
    write_npz(tmp_path / "version.npz", entries, format_version="1")
    refused(tmp_path / "version.npz", "invalid model format_version")
    write_npz(tmp_path / "nonet.npz", entries, network=None)
    refused(tmp_path / "nonet.npz", "no network configuration")
    write_npz(tmp_path / "badnet.npz", entries, network=dict(CONFIG.to_dict(), patch_size=3))
    refused(tmp_path / "badnet.npz", "invalid network configuration")


def test_refuses_wrong_weights(tmp_path):
    save_model(tmp_path / "good.npz", make_model())
    entries = raw_entries(tmp_path / "good.npz")
    np.savez(tmp_path / "missing.npz", **{k: v for k, v in entries.items() if k != "w/fc2.weight"})
    refused(tmp_path / "missing.npz", "missing weight.s. fc2.weight")
    np.savez(tmp_path / "extra.npz", **dict(entries, **{"w/fc4.weight": np.zeros(3, np.float32)}))
    refused(tmp_path / "extra.npz", "unexpected weight.s. fc4.weight")
    np.savez(tmp_path / "shape.npz", **dict(entries, **{"w/fc1.weight": np.zeros((16, 7), np.float32)}))
    refused(tmp_path / "shape.npz", r"fc1.weight has shape \(16, 7\) but the network configuration needs")
    # Weights for another configuration (more landmarks) do not fit this one.
    write_npz(tmp_path / "config.npz", entries, network=dict(CONFIG.to_dict(), n_landmarks=6))
    refused(tmp_path / "config.npz", "weight")
    ints = dict(entries, **{"w/out.bias": np.zeros(15, np.int32)})
    np.savez(tmp_path / "ints.npz", **ints)
    refused(tmp_path / "ints.npz", "weight out.bias is int32, not floating point")
    nan = dict(entries, **{"w/out.bias": np.full(15, np.nan, np.float32)})
    np.savez(tmp_path / "nan.npz", **nan)
    refused(tmp_path / "nan.npz", "NaN or infinite")


class _Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("entry", ["metadata", "w/fc1.bias"])
def test_refuses_pickled_objects_without_running_them(tmp_path, entry):
    save_model(tmp_path / "good.npz", make_model())
    marker = tmp_path / "code_ran"
    evil = np.array([_Payload(str(marker))], dtype=object)
    np.savez(tmp_path / "evil.npz", **dict(raw_entries(tmp_path / "good.npz"), **{entry: evil}))
    text = refused(tmp_path / "evil.npz", "pickled Python object")
    assert entry in text and not marker.exists()
    # The payload is live: loading with pickle allowed would have run it.
    with np.load(tmp_path / "evil.npz", allow_pickle=True) as f:
        f[entry]
    assert marker.exists()
