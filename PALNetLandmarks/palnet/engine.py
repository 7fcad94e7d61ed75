"""PAL-Net forward pass in NumPy: the one inference path (no torch here, ever).

Layout, shared with ``palnet.network`` (which trains the same weights):
patches are channels-last ``(B, L, P, C)``; a point-wise (1x1) convolution is
one matmul over the channel axis with a ``(out, in)`` weight, as torch.nn.Linear.
Each block is conv_a -> ReLU -> conv_b -> ReLU, then patch attention over all
``L * P_b`` positions of that map, then max pooling along the points axis
(floor mode). Attention is taken on the *unpooled* map, as in the reference
implementation (Ali5hadman/PAL-Net, src/models/model.py), so block b has one
attention bias per position of its input size ``L * P_b``. The head sees
``[attention vectors of every block..., last pooled map flattened in (L, P, C)
order]`` -> fc1 + ReLU -> fc2 -> dropout (identity here) -> out -> ``(B, L, 3)``.

Top-k attention keeps every position scoring at least the k-th highest score
(ties at the threshold all stay), so NumPy and torch pick the same set.
"""
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from .errors import PalnetError

ATTENTION_KINDS = ("soft", "topk", "none")


@dataclass
class NetworkConfig:
    """Everything needed to rebuild the network; stored as JSON in the model file."""

    n_landmarks: int = 50
    patch_size: int = 200  # points per patch; a multiple of prod(pools) wastes none
    widths: Tuple[int, ...] = (32, 64, 128)
    pools: Tuple[int, ...] = (5, 5, 4)
    fc: int = 1024
    dropout: float = 0.1
    attention: str = "soft"
    attention_topk: int = 16
    in_channels: int = 3  # xyz relative to the patch centre

    def __post_init__(self):
        # Validate on construction so an impossible network never exists.
        for name in ("n_landmarks", "patch_size", "fc", "attention_topk", "in_channels"):
            setattr(self, name, _positive_int(name, getattr(self, name)))
        for name in ("widths", "pools"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) == 0:
                raise PalnetError("{} must be a non-empty list of positive integers".format(name))
            setattr(self, name, tuple(_positive_int(name, v) for v in value))
        if len(self.widths) != len(self.pools):
            raise PalnetError("{} widths but {} pools: one of each per block".format(len(self.widths), len(self.pools)))
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise PalnetError("dropout must be a number in [0, 1), not {!r}".format(self.dropout))
        self.dropout = float(self.dropout)
        if self.attention not in ATTENTION_KINDS:
            raise PalnetError("attention must be one of {}, not {!r}".format(", ".join(ATTENTION_KINDS), self.attention))
        need = int(np.prod(self.pools))
        if self.patch_size < need:
            raise PalnetError("patch_size {} is smaller than the product of the pools {} = {}".format(
                self.patch_size, "x".join(map(str, self.pools)), need))
        if self.attention == "topk" and self.attention_topk > min(attention_positions(self)):
            raise PalnetError("attention_topk {} exceeds the {} positions of the last block".format(
                self.attention_topk, min(attention_positions(self))))

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["widths"], d["pools"] = list(self.widths), list(self.pools)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: Optional[str] = None) -> "NetworkConfig":
        """The configuration from its JSON form; unknown keys or bad values name ``source``."""
        if not isinstance(d, Mapping):
            raise PalnetError("network configuration is not a JSON object", source)
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise PalnetError("unknown network configuration key(s) {}".format(", ".join(unknown)), source)
        try:
            return cls(**d)
        except PalnetError as e:
            raise PalnetError("invalid network configuration: " + e.message, source) from None


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise PalnetError("{} must be a positive integer, not {!r}".format(name, value))
    return int(value)


def block_points(config: NetworkConfig) -> List[int]:
    """Points per patch entering each block, then after the last pool (len = blocks + 1)."""
    points = [config.patch_size]
    for k in config.pools:
        points.append(points[-1] // k)
    return points


def attention_positions(config: NetworkConfig) -> List[int]:
    """Positions (= attention biases) of each block's unpooled map."""
    return [config.n_landmarks * p for p in block_points(config)[:-1]]


def head_inputs(config: NetworkConfig) -> int:
    flat = config.n_landmarks * block_points(config)[-1] * config.widths[-1]
    return flat + (0 if config.attention == "none" else sum(config.widths))


def expected_weight_shapes(config: NetworkConfig) -> Dict[str, Tuple[int, ...]]:
    """Name -> shape of every weight, in state-dict order (equals PalNet(config).state_dict())."""
    shapes = {}  # type: Dict[str, Tuple[int, ...]]
    cin = config.in_channels
    for i, (width, positions) in enumerate(zip(config.widths, attention_positions(config))):
        p = "blocks.{}.".format(i)
        shapes[p + "conv_a.weight"], shapes[p + "conv_a.bias"] = (width, cin), (width,)
        shapes[p + "conv_b.weight"], shapes[p + "conv_b.bias"] = (width, width), (width,)
        if config.attention != "none":
            shapes[p + "attention.weight"], shapes[p + "attention.bias"] = (width,), (positions,)
        cin = width
    fc, out = config.fc, 3 * config.n_landmarks
    shapes.update({"fc1.weight": (fc, head_inputs(config)), "fc1.bias": (fc,),
                   "fc2.weight": (fc, fc), "fc2.bias": (fc,),
                   "out.weight": (out, fc), "out.bias": (out,)})
    return shapes


def _listed(names: List[str], limit: int = 4) -> str:
    more = len(names) - limit
    return ", ".join(names[:limit]) + (" and {} more".format(more) if more > 0 else "")


def check_weights(weights: Mapping[str, Any], config: NetworkConfig, source: Optional[str] = None) -> None:
    """Refuse (PalnetError naming ``source``) weights whose names or shapes do not fit ``config``."""
    expected = expected_weight_shapes(config)
    missing = [k for k in expected if k not in weights]
    if missing:
        raise PalnetError("missing weight(s) {} for this network configuration".format(_listed(missing)), source)
    extra = [k for k in weights if k not in expected]
    if extra:
        raise PalnetError("unexpected weight(s) {} for this network configuration".format(_listed(extra)), source)
    for name, shape in expected.items():
        if tuple(np.shape(weights[name])) != shape:
            raise PalnetError("weight {} has shape {} but the network configuration needs {}".format(
                name, tuple(np.shape(weights[name])), shape), source)


def _dense(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, relu: bool) -> np.ndarray:
    # One 2-D GEMM over all positions (a 4-D @ would run B*L small GEMMs).
    y = x.reshape(-1, x.shape[-1]) @ weight.T
    y += bias
    if relu:
        np.maximum(y, 0, out=y)
    return y.reshape(x.shape[:-1] + (weight.shape[0],))


def _attend(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, topk: Optional[int]) -> np.ndarray:
    """Attention pooling of x (B, N, C) -> (B, C)."""
    B, N, C = x.shape
    e = np.tanh((x.reshape(-1, C) @ weight).reshape(B, N) + bias)
    a = np.exp(e - e.max(axis=1, keepdims=True))
    if topk is not None and topk < N:
        kth = np.partition(e, N - topk, axis=1)[:, N - topk:N - topk + 1]
        a *= e >= kth
    a /= a.sum(axis=1, keepdims=True)
    return (a[:, None, :] @ x)[:, 0, :]


def forward(weights: Mapping[str, np.ndarray], config: NetworkConfig, patches: np.ndarray) -> np.ndarray:
    """Landmark coordinates (L, 3) or (B, L, 3) for patches (L, P, C) or (B, L, P, C), eval mode."""
    x = np.asarray(patches, dtype=np.float32)
    single = x.ndim == 3
    if single:
        x = x[None]
    L, P, C = config.n_landmarks, config.patch_size, config.in_channels
    if x.ndim != 4 or x.shape[1:] != (L, P, C):
        raise PalnetError("patches have shape {}, the network needs (B, {}, {}, {})".format(
            tuple(np.shape(patches)), L, P, C))
    check_weights(weights, config)
    # No-op for float32 (load_model already casts once); keeps float16 dicts usable.
    w = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
    B = x.shape[0]
    topk = config.attention_topk if config.attention == "topk" else None
    features = []
    for i, k in enumerate(config.pools):
        p = "blocks.{}.".format(i)
        x = _dense(x, w[p + "conv_a.weight"], w[p + "conv_a.bias"], relu=True)
        x = _dense(x, w[p + "conv_b.weight"], w[p + "conv_b.bias"], relu=True)
        if config.attention != "none":
            features.append(_attend(x.reshape(B, -1, x.shape[-1]), w[p + "attention.weight"],
                                    w[p + "attention.bias"], topk))
        n = x.shape[2] // k
        x = x[:, :, :n * k].reshape(B, L, n, k, x.shape[-1]).max(axis=3)
    features.append(x.reshape(B, -1))
    h = _dense(np.concatenate(features, axis=1), w["fc1.weight"], w["fc1.bias"], relu=True)
    h = _dense(h, w["fc2.weight"], w["fc2.bias"], relu=False)
    out = _dense(h, w["out.weight"], w["out.bias"], relu=False).reshape(B, L, 3)
    return out[0] if single else out
