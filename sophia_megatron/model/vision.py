"""The frozen InternVL vision path: InternViT tower, pixel shuffle, ``mlp1`` projector.

SOPHIA never trains the vision tower or the projector (docs/ALGORITHM.md §1), so they are plain
PyTorch modules replicated on every rank of the first pipeline stage (vision TP = 1), with
``requires_grad=False`` and no optimizer state. Both InternViT flavours are covered:

- 300M: LayerNorm, qkv bias, no qk-norm;
- 6B: RMSNorm, no qkv bias, q/k RMSNorm over the full width (before the head split).

Parameter names are short and close to the original remote-code format: ``tower.embeddings.{cls_token,
patch_embedding, position_embedding}``, ``tower.layers.N.{norm1, norm2, attn.{qkv, q_norm, k_norm,
proj}, fc1, fc2, ls1, ls2}`` (the fused ``qkv`` of the original format) and ``projector.{norm,
linear_1, linear_2}`` (``mlp1.0/1/3``); the converter's table (``conversion/internvl_mapping.py``)
maps them to both Hugging Face formats. The maths matches transformers' implementation exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from conversion.arch import InternVLArch, VisionArch

QK_NORM_EPS = 1e-6  # InternViT-6B builds q_norm/k_norm with eps 1e-6 (both formats)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def make_norm(arch: VisionArch) -> nn.Module:
    if arch.norm_type == "rms_norm":
        return RMSNorm(arch.hidden_size, arch.norm_eps)
    return nn.LayerNorm(arch.hidden_size, eps=arch.norm_eps)


class VisionEmbeddings(nn.Module):
    def __init__(self, arch: VisionArch) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, arch.hidden_size))
        self.patch_embedding = nn.Conv2d(3, arch.hidden_size, kernel_size=arch.patch_size,
                                         stride=arch.patch_size)
        self.position_embedding = nn.Parameter(torch.zeros(1, arch.num_positions, arch.hidden_size))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding


class VisionAttention(nn.Module):
    def __init__(self, arch: VisionArch) -> None:
        super().__init__()
        self.num_heads = arch.num_heads
        self.qkv = nn.Linear(arch.hidden_size, 3 * arch.hidden_size, bias=arch.qkv_bias)
        self.proj = nn.Linear(arch.hidden_size, arch.hidden_size)
        self.q_norm = RMSNorm(arch.hidden_size, QK_NORM_EPS) if arch.qk_norm else None
        self.k_norm = RMSNorm(arch.hidden_size, QK_NORM_EPS) if arch.qk_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, width = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.reshape(batch, seq, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, seq, width))


class VisionLayer(nn.Module):
    def __init__(self, arch: VisionArch) -> None:
        super().__init__()
        self.norm1, self.norm2 = make_norm(arch), make_norm(arch)
        self.attn = VisionAttention(arch)
        self.fc1 = nn.Linear(arch.hidden_size, arch.ffn_hidden_size)
        self.fc2 = nn.Linear(arch.ffn_hidden_size, arch.hidden_size)
        self.ls1 = nn.Parameter(torch.ones(arch.hidden_size))
        self.ls2 = nn.Parameter(torch.ones(arch.hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1 * self.attn(self.norm1(x))
        return x + self.ls2 * self.fc2(F.gelu(self.fc1(self.norm2(x))))


class InternViT(nn.Module):
    """Pixels ``[tiles, 3, H, W]`` -> last hidden state ``[tiles, 1 + patches, C]``."""

    def __init__(self, arch: VisionArch) -> None:
        super().__init__()
        if arch.hidden_act != "gelu":
            raise ValueError(f"InternViT with hidden_act={arch.hidden_act!r} is not supported")
        self.embeddings = VisionEmbeddings(arch)
        self.layers = nn.ModuleList(VisionLayer(arch) for _ in range(arch.num_layers))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(pixel_values)
        for layer in self.layers:
            x = layer(x)
        return x


def pixel_shuffle(features: torch.Tensor, ratio: float) -> torch.Tensor:
    """InternVL's pixel shuffle (``ps_version`` v2): ``[n, w, h, c] -> [n, w*r, h*r, c/r^2]``."""
    n, w, h, c = features.shape
    x = features.view(n, w, int(h * ratio), int(c / ratio)).permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(h * ratio), int(w * ratio), int(c / (ratio * ratio)))
    return x.permute(0, 2, 1, 3).contiguous()


class Projector(nn.Module):
    """``mlp1``: LayerNorm(4C) -> Linear(4C -> H) -> GELU -> Linear(H -> H)."""

    def __init__(self, in_features: int, hidden_size: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_features)
        self.linear_1 = nn.Linear(in_features, hidden_size)
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(self.norm(x))))


class VisionPath(nn.Module):
    """Tower + pixel shuffle + projector: ``[tiles, 3, H, W] -> [tiles, tokens_per_tile, H_lm]``."""

    def __init__(self, arch: InternVLArch) -> None:
        super().__init__()
        if arch.projector_act != "gelu":
            raise ValueError(f"projector activation {arch.projector_act!r} is not supported")
        self.ratio = arch.downsample_ratio
        self.tower = InternViT(arch.vision)
        in_features = int(arch.vision.hidden_size / (self.ratio * self.ratio))
        self.projector = Projector(in_features, arch.language.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.tower(pixel_values)[:, 1:, :]  # class token dropped
        n, patches, c = features.shape
        grid = int(patches ** 0.5)
        features = pixel_shuffle(features.reshape(n, grid, grid, c), self.ratio)
        return self.projector(features.reshape(n, -1, features.shape[-1]))

    def freeze(self) -> VisionPath:
        for param in self.parameters():
            param.requires_grad_(False)
        return self.eval()
