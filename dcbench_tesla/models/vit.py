"""A small Vision Transformer for cross-architecture evaluation (plain torch).

Defaults follow the dataset-distillation cross-architecture setting: patch 4, dim 512, depth 6,
8 heads of dim 64, MLP 512, dropout 0.1, a learned position embedding and CLS pooling.
Attention is written out (no fused kernel) so second-order gradients work everywhere.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head self-attention with an explicit softmax (twice differentiable).

    Args:
        dim: Token dimension.
        heads: Number of heads.
        head_dim: Dimension per head.
        dropout: Dropout on the attention weights and the output.

    """

    def __init__(self, dim: int, heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.attn_drop = nn.Dropout(dropout)
        self.out = nn.Linear(heads * head_dim, dim)
        self.out_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """Attend over the tokens of ``x`` (B, N, dim)."""
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, N, head_dim)
        weights = self.attn_drop(torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1))
        out = (weights @ v).transpose(1, 2).reshape(batch, tokens, self.heads * self.head_dim)
        return self.out_drop(self.out(out))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(LN(x))`` then ``x + mlp(LN(x))``."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, head_dim, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to tokens (B, N, dim)."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Vision Transformer with CLS pooling.

    Args:
        channels: Input channels.
        num_classes: Number of output logits.
        image_size: Input height and width; must be a multiple of ``patch``.
        patch: Patch side in pixels.
        dim: Token dimension.
        depth: Number of transformer blocks.
        heads: Attention heads.
        head_dim: Dimension per head.
        mlp_dim: Hidden size of the MLPs.
        dropout: Dropout inside the blocks.
        emb_dropout: Dropout on the embedded tokens.

    Raises:
        ValueError: If ``image_size`` is not a multiple of ``patch``.

    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: int,
        patch: int = 4,
        dim: int = 512,
        depth: int = 6,
        heads: int = 8,
        head_dim: int = 64,
        mlp_dim: int = 512,
        dropout: float = 0.1,
        emb_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if patch < 1 or image_size % patch != 0:
            raise ValueError(f"ViT image_size {image_size} must be a multiple of the patch size {patch}")
        self.patch = patch
        num_patches = (image_size // patch) ** 2
        self.patch_embed = nn.Linear(channels * patch * patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.emb_drop = nn.Dropout(emb_dropout)
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads, head_dim, mlp_dim, dropout) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.embed_dim = dim
        self.classifier = nn.Linear(dim, num_classes)

    def _patches(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, num_patches, C * patch * patch), patches in row-major order."""
        batch, channels, height, width = x.shape
        p = self.patch
        x = x.reshape(batch, channels, height // p, p, width // p, p)
        x = x.permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, p, C)
        return x.reshape(batch, (height // p) * (width // p), p * p * channels)

    def embed(self, x: Tensor) -> Tensor:
        """Return the CLS token's final feature, shape (B, ``embed_dim``)."""
        tokens = self.patch_embed(self._patches(x))
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat((cls, tokens), dim=1) + self.pos_embed
        tokens = self.blocks(self.emb_drop(tokens))
        return self.norm(tokens[:, 0])

    def forward(self, x: Tensor) -> Tensor:
        """Logits, shape (B, num_classes)."""
        return self.classifier(self.embed(x))


def build_vit(channels: int, num_classes: int, image_size: int, **kwargs: Any) -> ViT:
    """ViT (patch 4, dim 512, depth 6, 8 heads x 64, MLP 512, dropout 0.1, CLS pooling).

    Args:
        channels: Input channels.
        num_classes: Number of output logits.
        image_size: Input height and width (a multiple of ``patch``).
        **kwargs: ``patch``, ``dim``, ``depth``, ``heads``, ``head_dim``, ``mlp_dim``,
            ``dropout``, ``emb_dropout`` (see :class:`ViT`).

    """
    return ViT(channels, num_classes, image_size, **kwargs)


__all__ = ["Attention", "TransformerBlock", "ViT", "build_vit"]
