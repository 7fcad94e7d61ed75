"""The NumPy engine computes exactly what the torch network computes, for every variant."""
import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from palnet import PalnetError
from palnet.engine import NetworkConfig, block_points, check_weights, expected_weight_shapes, forward

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")

CONFIGS = {
    "default": dict(n_landmarks=50, patch_size=100, fc=64),
    "no_attention": dict(n_landmarks=50, patch_size=100, fc=64, attention="none"),
    "topk": dict(n_landmarks=50, patch_size=100, fc=64, attention="topk", attention_topk=16),
    "two_blocks": dict(n_landmarks=50, patch_size=100, fc=64, widths=(32, 64), pools=(5, 5)),
    "five_landmarks": dict(n_landmarks=5, patch_size=100, fc=64),
    "l68_p50": dict(n_landmarks=68, patch_size=50, fc=64, pools=(5, 5, 2)),
    "floor_mode": dict(n_landmarks=7, patch_size=137, fc=32),  # 137 -> 27 -> 5 -> 1
    "one_block_topk": dict(n_landmarks=4, patch_size=12, fc=16, widths=(8,), pools=(3,),
                           attention="topk", attention_topk=5),
}


def random_net(config, seed=0):
    """A PalNet with xavier weights and random non-zero biases (so biases are really tested)."""
    import torch
    from palnet.network import PalNet

    torch.manual_seed(seed)
    net = PalNet(NetworkConfig(**config) if isinstance(config, dict) else config)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                # Attention biases pass through tanh, so they need to be large to matter.
                p.normal_(0.0, 2.0 if "attention" in name else 0.3)
    return net.eval()


def torch_forward(net, x):
    import torch

    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


@needs_torch
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_engine_matches_torch(name):
    from palnet.network import export_weights

    net = random_net(CONFIGS[name])
    c = net.config
    x = np.random.default_rng(1).normal(size=(3, c.n_landmarks, c.patch_size, 3)).astype(np.float32)
    expected = torch_forward(net, x)
    got = forward(export_weights(net), c, x)
    assert got.shape == (3, c.n_landmarks, 3) and got.dtype == np.float32
    scale = max(1.0, float(np.abs(expected).max()))
    assert np.abs(got - expected).max() <= 1e-4 * scale
    # Unbatched input gives the unbatched answer.
    np.testing.assert_allclose(forward(export_weights(net), c, x[1]), expected[1], atol=1e-4 * scale)


@needs_torch
@pytest.mark.parametrize("topk", [None, 1, 7, 40])
def test_attention_pooling_matches_torch(topk):
    """The attention vectors alone (a small part of the head's input) match closely."""
    import torch
    from palnet.engine import _attend
    from palnet.network import PatchAttention

    torch.manual_seed(0)
    att = PatchAttention(16, 40, topk)
    with torch.no_grad():
        att.bias.normal_(0.0, 2.0)
        x = torch.relu(torch.randn(3, 40, 16))
        expected = att(x).numpy()
    got = _attend(x.numpy(), att.weight.detach().numpy(), att.bias.detach().numpy(), topk)
    np.testing.assert_allclose(got, expected, atol=1e-5)


@needs_torch
def test_topk_ties_are_all_kept_in_both():
    """Zero input and zero attention biases make every score equal: both keep all positions."""
    import torch
    from palnet.network import export_weights

    net = random_net(CONFIGS["topk"])
    with torch.no_grad():
        for block in net.blocks:
            block.attention.bias.zero_()
    x = np.zeros((2, 50, 100, 3), np.float32)
    np.testing.assert_allclose(forward(export_weights(net), net.config, x), torch_forward(net, x), atol=1e-4)


@needs_torch
def test_topk_differs_from_soft():
    from palnet.network import export_weights

    net = random_net(CONFIGS["topk"])
    w = export_weights(net)
    x = np.random.default_rng(2).normal(size=(1, 50, 100, 3)).astype(np.float32)
    soft = NetworkConfig(**dict(CONFIGS["topk"], attention="soft"))
    assert np.abs(forward(w, soft, x) - forward(w, net.config, x)).max() > 1e-3


@needs_torch
def test_dropout_only_in_training():
    import torch

    net = random_net(CONFIGS["default"])
    x = torch.from_numpy(np.random.default_rng(3).normal(size=(2, 50, 100, 3)).astype(np.float32))
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
        net.train()
        assert not torch.equal(net(x), net(x))


@needs_torch
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_expected_shapes_equal_state_dict(name):
    net = random_net(CONFIGS[name])
    state = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert list(state.items()) == list(expected_weight_shapes(net.config).items())


@needs_torch
def test_initialisation_xavier_and_zero_biases():
    import torch
    from palnet.network import PalNet

    torch.manual_seed(0)
    net = PalNet(NetworkConfig(n_landmarks=50, patch_size=100, fc=256))
    for name, p in net.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
    # Xavier normal: std = sqrt(2 / (fan_in + fan_out)); 65536 samples -> std within ~1 %.
    assert abs(float(net.fc2.weight.detach().std()) / (2.0 / (256 + 256)) ** 0.5 - 1) < 0.03
    assert abs(float(net.blocks[2].conv_b.weight.detach().std()) / (2.0 / 256) ** 0.5 - 1) < 0.05


@needs_torch
def test_load_weights_round_trip():
    import torch
    from palnet.network import PalNet, export_weights, load_weights

    a = random_net(CONFIGS["default"], seed=1)
    b = PalNet(a.config)
    load_weights(b, export_weights(a))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    bad = export_weights(a)
    bad["fc2.bias"] = np.zeros(3, np.float32)
    with pytest.raises(PalnetError, match="fc2.bias has shape"):
        load_weights(b, bad)


def test_block_points_floor_mode():
    assert block_points(NetworkConfig(patch_size=256)) == [256, 51, 10, 2]
    assert block_points(NetworkConfig(patch_size=100, widths=(32, 64), pools=(5, 5))) == [100, 20, 4]


@pytest.mark.parametrize("kwargs, message", [
    (dict(patch_size=50), "smaller than the product of the pools"),
    (dict(widths=(32, 64)), "2 widths but 3 pools"),
    (dict(widths=()), "widths must be a non-empty list"),
    (dict(pools=(5, 0, 4)), "pools must be a positive integer"),
    (dict(n_landmarks=0), "n_landmarks must be a positive integer"),
    (dict(fc=12.5), "fc must be a positive integer"),
    (dict(dropout=1.0), "dropout must be"),
    (dict(attention="hard"), "attention must be one of"),
    (dict(patch_size=100, attention="topk", attention_topk=1000), "exceeds the 200 positions"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(PalnetError, match=message):
        NetworkConfig(**kwargs)


def test_config_dict_round_trip_and_refusals():
    c = NetworkConfig(n_landmarks=5, patch_size=100, widths=(8, 16), pools=(5, 5), attention="topk")
    assert NetworkConfig.from_dict(c.to_dict()) == c
    with pytest.raises(PalnetError, match="model.npz: unknown network configuration key"):
        NetworkConfig.from_dict(dict(c.to_dict(), depth=3), "model.npz")
    with pytest.raises(PalnetError, match="model.npz: invalid network configuration: patch_size"):
        NetworkConfig.from_dict(dict(c.to_dict(), patch_size=10), "model.npz")


def test_forward_refuses_bad_input_and_weights():
    c = NetworkConfig(n_landmarks=5, patch_size=100, fc=16)
    weights = {k: np.zeros(s, np.float32) for k, s in expected_weight_shapes(c).items()}
    assert forward(weights, c, np.zeros((5, 100, 3))).shape == (5, 3)
    with pytest.raises(PalnetError, match="patches have shape"):
        forward(weights, c, np.zeros((5, 99, 3)))
    del weights["out.bias"]
    with pytest.raises(PalnetError, match="missing weight"):
        check_weights(weights, c)


def test_engine_does_not_import_torch():
    code = "import palnet.engine, palnet.modelfile, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
