"""VQGAN numerics: the encoder equals transformers' ChameleonVQVAE, the decoder a functional reference."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F
import yaml

from engine.frontend.vqgan import (
    VQGANConfig,
    VQModel,
    encoder_mismatch,
    load_hf_vqmodel,
    load_meta_vqgan,
    write_meta_vqgan,
)

HF_VQ = {
    "resolution": 32, "base_channels": 32, "channel_multiplier": [1, 2], "attn_resolutions": [16],
    "num_embeddings": 64, "embed_dim": 16, "latent_channels": 16, "num_res_blocks": 2, "in_channels": 3,
    "double_latent": False, "dropout": 0.0, "attn_type": "vanilla",
}


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Weights ~ 1/sqrt(fan_in), non-trivial norms and biases, so codes and pixels vary."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


@pytest.fixture(scope="module")
def hf_vqvae():
    from transformers import ChameleonVQVAEConfig
    from transformers.models.chameleon.modeling_chameleon import ChameleonVQVAE

    model = ChameleonVQVAE(ChameleonVQVAEConfig(**HF_VQ)).eval()
    _randomise(model, seed=0)
    return model


@pytest.fixture(scope="module", params=[[16], [32]], ids=["attn@16", "attn@32"])
def full_model(request) -> VQModel:
    """Attention at the coarse level, then at the fine one: checks the decoder's resolution bookkeeping."""
    cfg = VQGANConfig.from_hf_vq_config({**HF_VQ, "attn_resolutions": request.param})
    model = VQModel(cfg, with_decoder=True)
    _randomise(model, seed=1)
    return model


def test_config_grid_and_validation():
    cfg = VQGANConfig.from_hf_vq_config(HF_VQ)
    assert (cfg.grid, cfg.ch_mult, cfg.attn_resolutions, cfg.n_embed) == (16, (1, 2), (16,), 64)
    chameleon_7b = VQGANConfig(embed_dim=256, n_embed=8192, z_channels=256, resolution=512)
    assert chameleon_7b.grid == 32
    assert VQGANConfig.from_hf_vq_config({}) == chameleon_7b  # transformers' defaults fill missing keys
    with pytest.raises(ValueError):
        VQGANConfig(embed_dim=8, n_embed=8, z_channels=8, resolution=30, ch=32, ch_mult=(1, 2, 4))
    with pytest.raises(ValueError):
        VQGANConfig.from_hf_vq_config({**HF_VQ, "attn_type": "linear"})


def test_encoder_matches_transformers(hf_vqvae):
    ours = VQModel(VQGANConfig.from_hf_vq_config(hf_vqvae.config.to_dict()), with_decoder=False)
    ours.load_state_dict(hf_vqvae.state_dict(), strict=True)
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    codes = ours.encode(pixels)
    with torch.no_grad():
        ref = hf_vqvae.encode(pixels).image_tokens.reshape(3, 16, 16)
    assert codes.dtype == torch.long and codes.shape == (3, 16, 16)
    assert torch.equal(codes, ref)
    assert codes.unique().numel() > 10


# --- decoder reference: plain functional ops walking the state dict -------------------------------

def _gn(sd, p, x):
    return F.group_norm(x, 32, sd[p + ".weight"], sd[p + ".bias"], eps=1e-6)


def _conv(sd, p, x, pad):
    return F.conv2d(x, sd[p + ".weight"], sd[p + ".bias"], padding=pad)


def _resblock(sd, p, x):
    h = _conv(sd, p + ".conv1", F.silu(_gn(sd, p + ".norm1", x)), 1)
    h = _conv(sd, p + ".conv2", F.silu(_gn(sd, p + ".norm2", h)), 1)
    if p + ".nin_shortcut.weight" in sd:
        x = _conv(sd, p + ".nin_shortcut", x, 0)
    return x + h


def _attn(sd, p, x):
    b, c, hh, ww = x.shape
    h = _gn(sd, p + ".norm", x)
    q, k, v = (_conv(sd, f"{p}.{n}", h, 0).flatten(2) for n in "qkv")  # b, c, hw
    w = torch.softmax(q.transpose(1, 2) @ k / c**0.5, dim=-1)  # b, hw(q), hw(k)
    out = (v @ w.transpose(1, 2)).reshape(b, c, hh, ww)
    return x + _conv(sd, p + ".proj_out", out, 0)


def _reference_decode(sd: dict, cfg: VQGANConfig, codes: torch.Tensor) -> torch.Tensor:
    z = F.embedding(codes, sd["quantize.embedding.weight"]).permute(0, 3, 1, 2)
    h = _conv(sd, "decoder.conv_in", _conv(sd, "post_quant_conv", z, 0), 1)
    h = _resblock(sd, "decoder.mid.block_1", h)
    h = _resblock(sd, "decoder.mid.block_2", _attn(sd, "decoder.mid.attn_1", h))
    for i in reversed(range(len(cfg.ch_mult))):
        for j in range(cfg.num_res_blocks + 1):
            h = _resblock(sd, f"decoder.up.{i}.block.{j}", h)
            if f"decoder.up.{i}.attn.{j}.q.weight" in sd:
                h = _attn(sd, f"decoder.up.{i}.attn.{j}", h)
        if i != 0:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = _conv(sd, f"decoder.up.{i}.upsample.conv", h, 1)
    h = _conv(sd, "decoder.conv_out", F.silu(_gn(sd, "decoder.norm_out", h)), 1)
    return h.clamp(-1, 1)


@pytest.mark.parametrize(("attn_res", "level"), [(16, 1), (32, 0)])
def test_decoder_layout_follows_taming(attn_res, level):
    keys = set(VQModel(VQGANConfig.from_hf_vq_config({**HF_VQ, "attn_resolutions": [attn_res]})).state_dict())
    # level i works at resolution 32 / 2**i, in the encoder and the decoder alike
    other = 1 - level
    assert f"encoder.down.{level}.attn.1.q.weight" in keys
    assert f"decoder.up.{level}.attn.2.q.weight" in keys
    assert not any(k.startswith((f"encoder.down.{other}.attn", f"decoder.up.{other}.attn")) for k in keys)
    assert "decoder.up.1.upsample.conv.weight" in keys and "decoder.up.0.upsample.conv.weight" not in keys
    assert "decoder.up.0.block.2.conv2.weight" in keys  # num_res_blocks + 1 blocks per level
    assert "decoder.up.0.block.0.nin_shortcut.weight" in keys  # 64 -> 32 channels going up


@pytest.mark.parametrize("shape", [(2, 16, 16), (1, 3, 5)])
def test_decoder_matches_functional_reference(full_model, shape):
    codes = torch.randint(0, 64, shape, generator=torch.Generator().manual_seed(7))
    out = full_model.decode(codes)
    ref = _reference_decode(full_model.state_dict(), full_model.config, codes)
    assert out.shape == (shape[0], 3, 2 * shape[1], 2 * shape[2])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert out.std() > 0.1  # not flat


def test_decode_rejects_bad_codes_and_missing_decoder(full_model):
    with pytest.raises(ValueError):
        full_model.decode(torch.full((1, 2, 2), 64))
    with pytest.raises(RuntimeError):
        VQModel(full_model.config, with_decoder=False).decode(torch.zeros(1, 2, 2, dtype=torch.long))


# --- Meta format ---------------------------------------------------------------------------------

def _hf_state(hf_vqvae) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in hf_vqvae.state_dict().items()}


def test_write_and_load_meta_round_trip(tmp_path, hf_vqvae):
    write_meta_vqgan(tmp_path / "a", _hf_state(hf_vqvae), HF_VQ, seed=3)
    write_meta_vqgan(tmp_path / "b", _hf_state(hf_vqvae), HF_VQ, seed=3)
    for name in ("vqgan.ckpt", "vqgan.yaml"):
        digests = {hashlib.sha256((tmp_path / d / name).read_bytes()).hexdigest() for d in "ab"}
        assert len(digests) == 1, f"{name} is not deterministic"

    cfg = VQGANConfig.from_hf_vq_config(HF_VQ)
    parsed = yaml.safe_load((tmp_path / "a" / "vqgan.yaml").read_text())
    assert parsed["model"]["params"]["ddconfig"]["ch_mult"] == [1, 2]
    assert VQGANConfig.from_meta_yaml(tmp_path / "a" / "vqgan.yaml") == cfg
    assert parsed == cfg.to_meta_yaml_dict()

    meta = load_meta_vqgan(tmp_path / "a" / "vqgan.ckpt")
    assert meta.decoder is not None
    for k, v in hf_vqvae.state_dict().items():
        assert torch.equal(meta.state_dict()[k], v), k

    hf = VQModel(cfg, with_decoder=False)
    hf.load_state_dict(hf_vqvae.state_dict(), strict=True)
    assert encoder_mismatch(hf, meta) == []
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    assert torch.equal(hf.encode(pixels), meta.encode(pixels))

    with torch.no_grad():
        hf.encoder.mid.attn_1.q.weight.add_(0.5)
    assert encoder_mismatch(hf, meta) == ["encoder.mid.attn_1.q.weight"]


def test_load_meta_ignores_loss_keys_and_rejects_others(tmp_path, hf_vqvae):
    write_meta_vqgan(tmp_path, _hf_state(hf_vqvae), HF_VQ, seed=0)
    blob = torch.load(tmp_path / "vqgan.ckpt", weights_only=True)
    blob["state_dict"]["loss.discriminator.main.0.weight"] = torch.zeros(2)
    torch.save(blob, tmp_path / "vqgan.ckpt")
    load_meta_vqgan(tmp_path / "vqgan.ckpt")
    blob["state_dict"]["encoder.extra.weight"] = torch.zeros(2)
    torch.save(blob, tmp_path / "vqgan.ckpt")
    with pytest.raises(ValueError, match="vqgan.ckpt.*encoder.extra.weight"):
        load_meta_vqgan(tmp_path / "vqgan.ckpt")


def test_tiny_checkpoint_end_to_end(tmp_path):
    from engine.offline.tiny import TinySpec, make_tiny

    model_dir = make_tiny(tmp_path / "tiny", TinySpec(grid=8, codebook_size=64))
    hf = load_hf_vqmodel(model_dir)
    meta = load_meta_vqgan(model_dir / "vqgan.ckpt")
    assert hf.decoder is None and meta.decoder is not None
    assert encoder_mismatch(hf, meta) == []
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    codes = hf.encode(pixels)
    assert codes.shape == (2, 8, 8) and torch.equal(codes, meta.encode(pixels))
    out = meta.decode(codes)
    assert out.shape == (2, 3, 16, 16) and out.std() > 0.1
