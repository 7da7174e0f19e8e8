"""Chameleon's image tokenizer: a taming-style VQGAN (encoder, codebook, decoder).

Follows CompVis/taming-transformers ``taming/modules/diffusionmodules/model.py``
and facebookresearch/chameleon ``chameleon/inference/vqgan.py`` (e3b711e), written
from them, inference-only: no time embedding, losses or training hooks. Attribute
paths equal checkpoint keys so both layouts load by name with ``strict=True``:
the Hugging Face one (``model.vqmodel.*`` in model.safetensors, encoder only) and
Meta's release (``vqgan.ckpt`` + ``vqgan.yaml``, encoder and decoder). The encoder
is bit-for-bit transformers' ``ChameleonVQVAE`` encoder (same op order).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from safetensors import safe_open
from torch import Tensor, nn

from engine.shared.vocab import CheckpointError

_HF_PREFIX = "model.vqmodel."
_ENCODER_PREFIXES = ("encoder.", "quantize.", "quant_conv.")
# transformers' ChameleonVQVAEConfig defaults, for a config.json that leaves them out
_HF_VQ_DEFAULTS = {
    "embed_dim": 256, "num_embeddings": 8192, "latent_channels": 256, "resolution": 512, "in_channels": 3,
    "base_channels": 128, "channel_multiplier": (1, 1, 2, 2, 4), "num_res_blocks": 2,
    "attn_resolutions": None, "double_latent": False, "attn_type": "vanilla",
}


# Encoder and decoder activations take GPU memory per image outside the share that --gpu-memory-utilization
# gives vLLM; passes over at most this many pixels bound it while keeping most of the batched throughput
# (bench/RESULTS.md, "VQGAN decode on a GPU").
MAX_PIXELS_PER_PASS = 4 * 512 * 512


def images_per_pass(height_px: int, width_px: int, max_pixels: int = MAX_PIXELS_PER_PASS) -> int:
    """How many images of this size one encoder or decoder pass may take (at least one)."""
    return max(1, max_pixels // (height_px * width_px))


@dataclass(frozen=True, slots=True)
class VQGANConfig:
    """Shape of one VQGAN, in Meta's (taming's) names."""

    embed_dim: int
    n_embed: int
    z_channels: int
    resolution: int
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()
    double_z: bool = False

    def __post_init__(self) -> None:
        sizes = (self.embed_dim, self.n_embed, self.z_channels, self.ch, self.num_res_blocks)
        if min(sizes) < 1 or not self.ch_mult:
            raise ValueError(f"VQGAN sizes must be positive and ch_mult non-empty: {self}")
        if any((self.ch * m) % 32 for m in self.ch_mult):
            raise ValueError(f"ch * ch_mult must be multiples of 32 (GroupNorm of 32 groups): ch={self.ch}")
        if self.resolution % 2 ** (len(self.ch_mult) - 1):
            raise ValueError(f"resolution {self.resolution} is not divisible by the downsampling factor")
        if self.double_z:
            raise ValueError("double_z=True is a KL-autoencoder setting; a VQ model cannot use it")

    @property
    def grid(self) -> int:
        """Codes per image side at ``resolution``."""
        return self.resolution // 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def from_hf_vq_config(cls, vq: dict) -> VQGANConfig:
        """From ``config.json``'s ``vq_config`` (transformers' ChameleonVQVAEConfig keys)."""
        vq = {**_HF_VQ_DEFAULTS, **vq}
        if vq["attn_type"] not in ("vanilla", None):
            raise ValueError(f"unsupported VQGAN attn_type {vq['attn_type']!r}; only 'vanilla' exists here")
        return cls(
            embed_dim=vq["embed_dim"], n_embed=vq["num_embeddings"], z_channels=vq["latent_channels"],
            resolution=vq["resolution"], in_channels=vq["in_channels"],
            out_ch=vq.get("out_channels", vq["in_channels"]), ch=vq["base_channels"],
            ch_mult=tuple(vq["channel_multiplier"]), num_res_blocks=vq["num_res_blocks"],
            attn_resolutions=tuple(vq["attn_resolutions"] or ()), double_z=bool(vq["double_latent"]),
        )

    @classmethod
    def from_meta_yaml(cls, path: str | Path) -> VQGANConfig:
        """From Meta's ``vqgan.yaml``: ``model.params.{embed_dim, n_embed, ddconfig}``."""
        params = yaml.safe_load(Path(path).read_text())["model"]["params"]
        dd = params["ddconfig"]
        return cls(
            embed_dim=params["embed_dim"], n_embed=params["n_embed"], z_channels=dd["z_channels"],
            resolution=dd["resolution"], in_channels=dd.get("in_channels", 3), out_ch=dd.get("out_ch", 3),
            ch=dd["ch"], ch_mult=tuple(dd["ch_mult"]), num_res_blocks=dd["num_res_blocks"],
            attn_resolutions=tuple(dd.get("attn_resolutions") or ()),
            double_z=bool(dd.get("double_z", False)),
        )

    def to_hf_vq_config(self) -> dict:
        """``config.json``'s ``vq_config`` (transformers' ChameleonVQVAEConfig keys)."""
        return dict(embed_dim=self.embed_dim, num_embeddings=self.n_embed, double_latent=self.double_z,
                    latent_channels=self.z_channels, resolution=self.resolution, in_channels=self.in_channels,
                    out_channels=self.out_ch, base_channels=self.ch, channel_multiplier=list(self.ch_mult),
                    num_res_blocks=self.num_res_blocks, attn_resolutions=list(self.attn_resolutions),
                    dropout=0.0, attn_type="vanilla")

    def to_meta_yaml_dict(self) -> dict:
        """Meta's ``vqgan.yaml`` layout; the keys its loader and transformers' converter read."""
        ddconfig = {
            "double_z": self.double_z, "z_channels": self.z_channels, "resolution": self.resolution,
            "in_channels": self.in_channels, "out_ch": self.out_ch, "ch": self.ch,
            "ch_mult": list(self.ch_mult), "num_res_blocks": self.num_res_blocks,
            "attn_resolutions": list(self.attn_resolutions), "dropout": 0.0,
        }
        params = {"embed_dim": self.embed_dim, "n_embed": self.n_embed, "ddconfig": ddconfig,
                  "lossconfig": {"target": "taming.modules.losses.DummyLoss"}, "ckpt_path": None}
        return {"model": {"target": "taming.models.vqgan.VQModel", "params": params}}


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


def _swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)  # not F.silu: keeps the encoder bit-identical to transformers'


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, with 1x1-conv projections."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = _norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        b, c, hh, ww = x.shape
        q = self.q(h).reshape(b, c, hh * ww).permute(0, 2, 1)  # b, hw, c
        k = self.k(h).reshape(b, c, hh * ww)  # b, c, hw
        w = F.softmax(torch.bmm(q, k) * (int(c) ** -0.5), dim=2)  # b, hw(q), hw(k)
        out = torch.bmm(self.v(h).reshape(b, c, hh * ww), w.permute(0, 2, 1))  # b, c, hw(q)
        return x + self.proj_out(out.reshape(b, c, hh, ww))


class Downsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # taming's asymmetric pad: right and bottom only


class Upsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution: ``block[j]`` each followed by ``attn[j]`` (if any), then a resample."""

    def __init__(self, cin: int, cout: int, n_blocks: int, attn: bool, resample: str | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cin if j == 0 else cout, cout) for j in range(n_blocks))
        self.attn = nn.ModuleList(AttnBlock(cout) for _ in range(n_blocks if attn else 0))
        self.downsample = Downsample(cout) if resample == "down" else None
        self.upsample = Upsample(cout) if resample == "up" else None

    def forward(self, h: Tensor) -> Tensor:
        for j, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[j](h)
        if self.downsample is not None:
            h = self.downsample(h)
        return h if self.upsample is None else self.upsample(h)


class _Mid(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.block_1, self.attn_1, self.block_2 = ResnetBlock(c, c), AttnBlock(c), ResnetBlock(c, c)

    def forward(self, h: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        n, ch = len(cfg.ch_mult), cfg.ch
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin, res = ch, cfg.resolution
        for i, mult in enumerate(cfg.ch_mult):
            last = i == n - 1
            self.down.append(_Level(cin, ch * mult, cfg.num_res_blocks, res in cfg.attn_resolutions,
                                    None if last else "down"))
            cin, res = ch * mult, res if last else res // 2
        self.mid = _Mid(cin)
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, cfg.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    """Mirror of the encoder; ``up[i]`` works at ``grid * 2**i`` pixels and runs from the top index down."""

    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        n, ch = len(cfg.ch_mult), cfg.ch
        cin, res = ch * cfg.ch_mult[-1], cfg.grid
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = _Mid(cin)
        levels: dict[int, _Level] = {}
        for i in reversed(range(n)):
            cout = ch * cfg.ch_mult[i]
            attn = res in cfg.attn_resolutions
            levels[i] = _Level(cin, cout, cfg.num_res_blocks + 1, attn, "up" if i else None)
            cin, res = cout, res * 2 if i else res
        self.up = nn.ModuleList(levels[i] for i in range(n))
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, cfg.out_ch, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(_swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    def __init__(self, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def forward(self, z: Tensor) -> Tensor:
        """[B, D, h, w] latents -> [B, h, w] nearest codebook indices (squared L2, as in transformers)."""
        b, d, hh, ww = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        e = self.embedding.weight
        dist = (torch.sum(flat**2, dim=1, keepdim=True) + torch.sum(e**2, dim=1)
                - 2 * torch.einsum("bd,dn->bn", flat, e.transpose(0, 1)))
        return torch.argmin(dist, dim=1).reshape(b, hh, ww)


class VQModel(nn.Module):
    """Encoder + codebook (+ decoder when the checkpoint has one); pixels are in [-1, 1]."""

    def __init__(self, cfg: VQGANConfig, with_decoder: bool = True) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        self.decoder = Decoder(cfg) if with_decoder else None
        self.eval()

    @property
    def pixels_per_code(self) -> int:
        """Pixels per code along each side."""
        return self.config.resolution // self.config.grid

    @torch.inference_mode()
    def encode(self, pixels: Tensor) -> Tensor:
        """[B, 3, R, R] float in [-1, 1] -> LongTensor [B, R/f, R/f] codes (f = 2**(levels-1))."""
        if pixels.dim() != 4 or pixels.shape[1] != self.config.in_channels:
            want = f"[B, {self.config.in_channels}, H, W]"
            raise ValueError(f"encode expects {want} pixels, got {tuple(pixels.shape)}")
        p = self.quant_conv.weight
        return self.quantize(self.quant_conv(self.encoder(pixels.to(p.device, p.dtype))))

    @torch.inference_mode()
    def decode(self, codes: Tensor) -> Tensor:
        """[B, h, w] codes -> float32 [B, out_ch, h*f, w*f] pixels clamped to [-1, 1]; any h, w."""
        if self.decoder is None:
            raise RuntimeError("this VQGAN has no decoder (the Hugging Face layout ships the encoder only); "
                               "load Meta's vqgan.ckpt with load_meta_vqgan")
        if codes.dim() != 3:
            raise ValueError(f"decode expects [B, h, w] codes, got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.config.n_embed):
            got = f"[{int(codes.min())}, {int(codes.max())}]"
            raise ValueError(f"codes must be in [0, {self.config.n_embed}), got {got}")
        e = self.quantize.embedding.weight
        z = self.quantize.embedding(codes.to(e.device, torch.long)).permute(0, 3, 1, 2)  # b, D, h, w
        return self.decoder(self.post_quant_conv(z)).clamp(-1.0, 1.0).float()


def _load_strict(model: VQModel, state: dict[str, Tensor], source: Path, dtype: torch.dtype,
                 device: str | torch.device) -> VQModel:
    expected, got = set(model.state_dict()), set(state)
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    if missing or unexpected:
        raise CheckpointError(f"{source}: VQGAN weights do not match the config: missing {missing[:8]}"
                              f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                              f"{' ...' if len(unexpected) > 8 else ''}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{source}: VQGAN weights do not match the config: {e}") from e
    return model.to(device=device, dtype=dtype).eval()


def read_hf_vq_state(model_dir: str | Path,
                     prefixes: tuple[str, ...] = (_HF_PREFIX,)) -> tuple[dict[str, Tensor], Path]:
    """The VQ model's tensors of a Hugging Face checkpoint, named by one of ``prefixes`` (removed), and the
    file named in messages about them."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({model_dir / f for k, f in weight_map.items() if k.startswith(prefixes)})
        source = index
    else:
        source = model_dir / "model.safetensors"
        files = [source]
    if not files or not all(f.exists() for f in files):
        raise CheckpointError(f"{source}: no safetensors files with {', '.join(p + '*' for p in prefixes)} tensors")
    state: dict[str, Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt", device="cpu") as st:
            for name in st.keys():  # noqa: SIM118 (not a dict)
                prefix = next((p for p in prefixes if name.startswith(p)), None)
                if prefix is not None:
                    state[name.removeprefix(prefix)] = st.get_tensor(name)
    return state, source


def load_hf_vqmodel(model_dir: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> VQModel:
    """The ``model.vqmodel.*`` tensors of a Hugging Face checkpoint; decoder only if the files carry one."""
    config_path = Path(model_dir) / "config.json"
    vq = json.loads(config_path.read_text()).get("vq_config")
    if not vq:
        raise CheckpointError(f"{config_path} has no vq_config")
    state, source = read_hf_vq_state(model_dir)
    cfg = VQGANConfig.from_hf_vq_config(vq)
    with_decoder = any(k.startswith("decoder.") for k in state)
    return _load_strict(VQModel(cfg, with_decoder), state, source, dtype, device)


def load_meta_vqgan(ckpt_path: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> VQModel:
    """Meta's ``vqgan.ckpt`` (``{"state_dict": ...}``), ``vqgan.yaml`` beside it; drops ``loss.*`` keys."""
    ckpt_path = Path(ckpt_path)
    yaml_path = ckpt_path.with_name("vqgan.yaml")
    if not yaml_path.exists():
        raise CheckpointError(f"{yaml_path} not found: Meta's VQGAN needs its yaml beside {ckpt_path.name}")
    cfg = VQGANConfig.from_meta_yaml(yaml_path)
    blob = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise CheckpointError(f"{ckpt_path}: expected a dict with a 'state_dict' entry")
    state = {k: v for k, v in blob["state_dict"].items() if not k.startswith("loss.")}
    return _load_strict(VQModel(cfg, with_decoder=True), state, ckpt_path, dtype, device)


def encoder_mismatch(a: VQModel, b: VQModel, rtol: float = 1e-2) -> list[str]:
    """Encoder/codebook tensors that differ; ``rtol`` tolerates a bf16 copy of fp32 weights."""
    sa, sb = a.state_dict(), b.state_dict()
    names = sorted(k for k in set(sa) | set(sb) if k.startswith(_ENCODER_PREFIXES))
    out = []
    for k in names:
        x, y = sa.get(k), sb.get(k)
        if x is None or y is None or x.shape != y.shape or not torch.allclose(
                x.detach().float().cpu(), y.detach().float().cpu(), rtol=rtol, atol=1e-6):
            out.append(k)
    return out


def write_meta_vqgan(dst_dir: Path, hf_vq_state: dict[str, Tensor], vq_config: dict, seed: int) -> None:
    """Write ``vqgan.ckpt`` + ``vqgan.yaml`` in Meta's format: the given encoder plus a seeded random decoder.

    Decoder convs get randn / sqrt(fan_in) weights and small random biases so decoded images vary;
    same inputs give the same bytes.
    """
    dst_dir = Path(dst_dir)
    cfg = VQGANConfig.from_hf_vq_config(vq_config)
    model = VQModel(cfg, with_decoder=True)
    gen = torch.Generator().manual_seed(seed)
    decoder_state: dict[str, Tensor] = {}
    for name, p in model.decoder.named_parameters():
        if "norm" in name:
            value = torch.ones(p.shape) if name.endswith("weight") else torch.zeros(p.shape)
        elif name.endswith("weight"):
            value = torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5
        else:
            value = 0.1 * torch.randn(p.shape, generator=gen)
        decoder_state["decoder." + name] = value
    state = {k: v.detach().float().cpu().clone().contiguous() for k, v in hf_vq_state.items()}
    _load_strict(model, {**state, **decoder_state}, dst_dir / "vqgan.ckpt", torch.float32, "cpu")
    dst_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {k: v.clone() for k, v in model.state_dict().items()}}, dst_dir / "vqgan.ckpt")
    (dst_dir / "vqgan.yaml").write_text(yaml.safe_dump(cfg.to_meta_yaml_dict(), sort_keys=False))
