"""PAL-Net in torch, for training only; prediction runs the same weights in palnet.engine.

Layout, weight names and the top-k rule are defined in engine.py's docstring;
this module must stay numerically identical to ``engine.forward`` (a test checks).
Only training imports this module, so torch is imported at the top.
"""
import math
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .engine import NetworkConfig, attention_positions, check_weights, head_inputs
from .errors import PalnetError


class PatchAttention(nn.Module):
    """a = softmax(tanh(x . weight + bias)) over positions; output sum(a * x): (B, N, C) -> (B, C)."""

    def __init__(self, channels: int, positions: int, topk: Optional[int] = None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels))
        self.bias = nn.Parameter(torch.zeros(positions))  # one per position
        self.topk = topk
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Xavier normal of the reference's (C, 1) weight: std = sqrt(2 / (C + 1)).
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / (self.weight.numel() + 1)))
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = torch.tanh(x @ self.weight + self.bias)
        if self.topk is not None and self.topk < e.shape[1]:
            kth = torch.topk(e, self.topk, dim=1).values[:, -1:]
            e = e.masked_fill(e < kth, float("-inf"))  # ties at the k-th score all stay
        a = torch.softmax(e, dim=1)
        return torch.bmm(a.unsqueeze(1), x).squeeze(1)


class PointBlock(nn.Module):
    """Two point-wise convolutions (Linear over channels-last) + attention + max pool along points."""

    def __init__(self, cin: int, width: int, pool: int, positions: int, attention: str, topk: int):
        super().__init__()
        self.conv_a = nn.Linear(cin, width)
        self.conv_b = nn.Linear(width, width)
        self.pool = pool
        self.attention = None if attention == "none" else PatchAttention(
            width, positions, topk if attention == "topk" else None)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        x = F.relu(self.conv_b(F.relu(self.conv_a(x))))
        att = None if self.attention is None else self.attention(x.flatten(1, 2))
        B, L, P, C = x.shape
        n = P // self.pool  # floor mode: trailing points dropped
        return x[:, :, :n * self.pool].reshape(B, L, n, self.pool, C).amax(dim=3), att


class PalNet(nn.Module):
    """patches (B, L, P, C) or (L, P, C) -> landmarks (B, L, 3) or (L, 3)."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        cin, blocks = config.in_channels, []
        for width, pool, positions in zip(config.widths, config.pools, attention_positions(config)):
            blocks.append(PointBlock(cin, width, pool, positions, config.attention, config.attention_topk))
            cin = width
        self.blocks = nn.ModuleList(blocks)
        self.fc1 = nn.Linear(head_inputs(config), config.fc)
        self.fc2 = nn.Linear(config.fc, config.fc)
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(config.fc, 3 * config.n_landmarks)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, PatchAttention):
                m.reset_parameters()

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        c = self.config
        single = patches.dim() == 3
        x = patches.unsqueeze(0) if single else patches
        if x.dim() != 4 or tuple(x.shape[1:]) != (c.n_landmarks, c.patch_size, c.in_channels):
            raise PalnetError("patches have shape {}, the network needs (B, {}, {}, {})".format(
                tuple(patches.shape), c.n_landmarks, c.patch_size, c.in_channels))
        features = []
        for block in self.blocks:
            x, att = block(x)
            if att is not None:
                features.append(att)
        features.append(x.flatten(1))
        h = self.fc2(F.relu(self.fc1(torch.cat(features, dim=1))))
        out = self.out(self.dropout(h)).view(-1, c.n_landmarks, 3)
        return out[0] if single else out


def export_weights(module: PalNet) -> Dict[str, np.ndarray]:
    """float32 copies of every weight, keyed by state-dict name (what engine.forward takes)."""
    return {k: v.detach().cpu().float().numpy().copy() for k, v in module.state_dict().items()}


def load_weights(module: PalNet, weights: Mapping[str, np.ndarray]) -> None:
    """Copy NumPy weights into ``module`` (names and shapes checked against its config)."""
    check_weights(weights, module.config)
    module.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in weights.items()},
                           strict=True)
