"""Logits of a Meta-layout release computed from its own tensors, the way Meta's inference code does:
adjacent-pair rotary embedding, one qk LayerNorm over head_dim per shard, RMSNorm, SwiGLU, optional
swin-norm. Plain torch, one unsharded ``consolidated.pth``; the conversion's oracle."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor


def _rms(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rotate_adjacent_pairs(x: Tensor, theta: float) -> Tensor:
    """x: (T, heads, head_dim); pair (2i, 2i+1) of position t rotated by t * theta^(-2i/head_dim)."""
    t, _, d = x.shape
    inverse_frequencies = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = torch.outer(torch.arange(t, dtype=torch.float64), inverse_frequencies)
    rotation = torch.polar(torch.ones_like(angles), angles)[:, None, :]
    pairs = torch.view_as_complex(x.double().reshape(t, -1, d // 2, 2).contiguous())
    return torch.view_as_real(pairs * rotation).reshape(x.shape).to(x.dtype)


def meta_logits(release: Path, ids: list[int]) -> Tensor:
    model_dir = next(release.glob("models/*"))
    raw = json.loads((model_dir / "params.json").read_text())
    p = raw.get("model", raw)
    w = {k: v.float() for k, v in torch.load(model_dir / "consolidated.pth", weights_only=True).items()}
    heads, kv_heads, eps = p["n_heads"], p.get("n_kv_heads") or p["n_heads"], p["norm_eps"]
    head_dim, steps = p["dim"] // heads, len(ids)
    causal = torch.ones(steps, steps, dtype=torch.bool).tril()

    def attention(x: Tensor, layer: str) -> Tensor:
        def project(name: str, count: int, norm: str | None) -> Tensor:
            out = (x @ w[f"{layer}attention.{name}.weight"].T).reshape(steps, count, head_dim)
            if norm is None:
                return out
            out = F.layer_norm(out, (head_dim,), w[f"{layer}attention.{norm}.weight"],
                               w[f"{layer}attention.{norm}.bias"], eps=1e-5)
            return _rotate_adjacent_pairs(out, p["rope_theta"])

        q = project("wq", heads, "q_normalization")
        k = project("wk", kv_heads, "k_normalization").repeat_interleave(heads // kv_heads, dim=1)
        v = project("wv", kv_heads, None).repeat_interleave(heads // kv_heads, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / head_dim**0.5
        mixed = torch.einsum("hqk,khd->qhd", scores.masked_fill(~causal, float("-inf")).softmax(-1), v)
        return mixed.reshape(steps, -1) @ w[f"{layer}attention.wo.weight"].T

    def feed_forward(x: Tensor, layer: str) -> Tensor:
        gate, up = (x @ w[f"{layer}feed_forward.{n}.weight"].T for n in ("w1", "w3"))
        return (F.silu(gate) * up) @ w[f"{layer}feed_forward.w2.weight"].T

    h = w["tok_embeddings.weight"][torch.tensor(ids)]
    for i in range(p["n_layers"]):
        layer = f"layers.{i}."
        norm_a, norm_f = w[f"{layer}attention_norm.weight"], w[f"{layer}ffn_norm.weight"]
        if p.get("swin_norm"):
            h = h + _rms(attention(h, layer), norm_a, eps)
            h = h + _rms(feed_forward(h, layer), norm_f, eps)
        else:
            h = h + attention(_rms(h, norm_a, eps), layer)
            h = h + feed_forward(_rms(h, norm_f, eps), layer)
    return _rms(h, w["norm.weight"], eps) @ w["output.weight"].T
