"""Meta's original Chameleon release layout, converted losslessly into the Hugging Face layout we serve.

The release (and GAIR's Anole, which ships the same way) is::

    models/7b/consolidated.pth | consolidated.00.pth ... (one file per tensor-parallel shard)
    models/7b/params.json       {"model_parallel_size": N, "model": {dim, n_layers, n_heads, ...}}
    tokenizer/text_tokenizer.json, tokenizer/vqgan.ckpt, tokenizer/vqgan.yaml

Three things differ from the Hugging Face layout besides the names. Meta's rotary embedding rotates
adjacent pairs (x0, x1), (x2, x3), ... while Hugging Face's rotates the two halves of each head, so the
rows of wq and wk (and the qk-norm parameters, which act before the rotation) are permuted within each
head. Meta's qk-norm is one LayerNorm over ``head_dim`` per tensor-parallel shard, applied to that
shard's heads; Hugging Face stores one row per head. And shards split each matrix along its parallel
dimension, so they are concatenated back. The image placeholder ``<image>`` is Meta's ``<reserved08707>``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import Tensor

from engine.frontend.vqgan import VQGANConfig
from engine.shared.vocab import IMAGE_PLACEHOLDER_NAME, CheckpointError

META_PLACEHOLDER_NAME = "<reserved08707>"
# Dimension along which tensor-parallel shards split each per-layer matrix (None: replicated).
_SHARD_DIM = {"attention.wq": 0, "attention.wk": 0, "attention.wv": 0, "attention.wo": 1,
              "feed_forward.w1": 0, "feed_forward.w3": 0, "feed_forward.w2": 1}
_HF_NAMES = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
             "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
             "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj",
             "feed_forward.w2": "mlp.down_proj", "attention_norm": "input_layernorm",
             "ffn_norm": "post_attention_layernorm"}


def find_meta_model_dir(root: str | Path) -> Path | None:
    """The ``models/<size>`` folder of a Meta-layout release, or None when ``root`` is not one."""
    root = Path(root)
    candidates = sorted(p.parent for p in root.glob("models/*/params.json"))
    return candidates[0] if candidates and (root / "tokenizer" / "text_tokenizer.json").exists() else None


def convert_meta_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Write the Hugging Face layout of the Meta-layout release ``src`` into ``dst``; returns ``dst``."""
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    model_dir = find_meta_model_dir(src)
    if model_dir is None:
        raise CheckpointError(f"{src} is not a Meta-layout Chameleon release: expected models/<size>/params.json "
                              "and tokenizer/text_tokenizer.json")
    params = _read_params(model_dir / "params.json")
    shards = _load_shards(model_dir)
    tokenizer_json = json.loads((src / "tokenizer" / "text_tokenizer.json").read_text())
    vocab = _vocabulary_map(tokenizer_json)
    vq_config = VQGANConfig.from_meta_yaml(src / "tokenizer" / "vqgan.yaml").to_hf_vq_config()

    dst.mkdir(parents=True, exist_ok=True)
    state = _hf_state_dict(shards, params)
    state.update({f"model.vqmodel.{k}": v for k, v in _vqgan_state(src).items() if not k.startswith("decoder.")})
    save_file({k: v.contiguous() for k, v in state.items()}, str(dst / "model.safetensors"),
              metadata={"format": "pt"})
    _hf_config(params, vocab, vq_config, vocab_size=state["lm_head.weight"].shape[0]).save_pretrained(dst)
    _write_processor(dst, tokenizer_json, vq_config)
    for name in ("vqgan.ckpt", "vqgan.yaml"):  # the decoder, for image output
        shutil.copyfile(src / "tokenizer" / name, dst / name)
    return dst


def _read_params(path: Path) -> dict:
    raw = json.loads(path.read_text())
    params = {**raw.get("model", raw), "model_parallel_size": raw.get("model_parallel_size", 1)}
    missing = {"dim", "n_layers", "n_heads"} - params.keys()
    if missing:
        raise CheckpointError(f"{path} lacks {sorted(missing)}")
    return params


def _load_shards(model_dir: Path) -> list[dict[str, Tensor]]:
    files = sorted(model_dir.glob("consolidated.*pth"))
    if not files:
        raise CheckpointError(f"{model_dir} holds no consolidated*.pth weights")
    return [torch.load(f, map_location="cpu", weights_only=True) for f in files]


def _rotary_rows(w: Tensor, heads: int) -> Tensor:
    """Reorder each head's rows from adjacent rotary pairs to Hugging Face's two halves."""
    rows = w.shape[0] // heads
    return w.reshape(heads, rows // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _hf_state_dict(shards: list[dict[str, Tensor]], params: dict) -> dict[str, Tensor]:
    heads, n_shards = params["n_heads"], len(shards)
    kv_heads = params.get("n_kv_heads") or heads
    state: dict[str, Tensor] = {
        "model.embed_tokens.weight": torch.cat([s["tok_embeddings.weight"] for s in shards], dim=1),
        "model.norm.weight": shards[0]["norm.weight"],
        "lm_head.weight": torch.cat([s["output.weight"] for s in shards], dim=0),
    }
    for i in range(params["n_layers"]):
        meta, hf = f"layers.{i}.", f"model.layers.{i}."
        for name, dim in _SHARD_DIM.items():
            state[hf + _HF_NAMES[name] + ".weight"] = torch.cat([s[meta + name + ".weight"] for s in shards], dim=dim)
        for name in ("attention_norm", "ffn_norm"):
            state[hf + _HF_NAMES[name] + ".weight"] = shards[0][meta + name + ".weight"]
        state[hf + "self_attn.q_proj.weight"] = _rotary_rows(state[hf + "self_attn.q_proj.weight"], heads)
        state[hf + "self_attn.k_proj.weight"] = _rotary_rows(state[hf + "self_attn.k_proj.weight"], kv_heads)
        norms = (("q_normalization", "q_norm", heads), ("k_normalization", "k_norm", kv_heads))
        for meta_norm, hf_norm, count in norms:
            for part in ("weight", "bias"):
                per_shard = torch.stack([s[f"{meta}attention.{meta_norm}.{part}"] for s in shards])
                per_shard = _rotary_rows(per_shard.T, heads=1).T  # (shards, head_dim): permuted like q/k rows
                state[f"{hf}self_attn.{hf_norm}.{part}"] = per_shard.repeat_interleave(count // n_shards, dim=0)
    return state


def _vocabulary_map(tokenizer_json: dict) -> dict[str, int]:
    vocab = dict(tokenizer_json["model"]["vocab"])
    if META_PLACEHOLDER_NAME in vocab:
        vocab[IMAGE_PLACEHOLDER_NAME] = vocab.pop(META_PLACEHOLDER_NAME)
    return vocab


def _vqgan_state(src: Path) -> dict[str, Tensor]:
    return torch.load(src / "tokenizer" / "vqgan.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def _hf_config(params: dict, vocab: dict[str, int], vq_config: dict, vocab_size: int):
    from transformers import ChameleonConfig

    dim, multiple_of = params["dim"], params.get("multiple_of", 256)
    hidden = int((params.get("ffn_dim_multiplier") or 1) * int(8 * dim / 3))  # Meta's FeedForward sizing
    theta = float(params.get("rope_theta", 10000.0))
    return ChameleonConfig(
        vocab_size=vocab_size, hidden_size=dim, intermediate_size=multiple_of * -(-hidden // multiple_of),
        num_hidden_layers=params["n_layers"], num_attention_heads=params["n_heads"],
        num_key_value_heads=params.get("n_kv_heads") or params["n_heads"], rms_norm_eps=params.get("norm_eps", 1e-5),
        rope_parameters={"rope_type": "default", "rope_theta": theta},
        # Meta's release trained at 4096 positions; later long-context variants raised theta with the length.
        max_position_embeddings=16384 if theta > 10000.0 else 4096,
        model_parallel_size=params["model_parallel_size"], swin_norm=bool(params.get("swin_norm", False)),
        bos_token_id=vocab.get("<s>"), eos_token_id=vocab.get("</s>"), pad_token_id=vocab.get("<pad>"),
        vq_config=vq_config, vocabulary_map=vocab, architectures=["ChameleonForConditionalGeneration"],
    )


def _write_processor(dst: Path, tokenizer_json: dict, vq_config: dict) -> None:
    """tokenizer.json (placeholder renamed) and processor_config.json for the VQGAN's native resolution."""
    from tokenizers import Tokenizer
    from transformers import ChameleonProcessor, PreTrainedTokenizerFast
    from transformers.models.chameleon.image_processing_pil_chameleon import ChameleonImageProcessorPil

    from engine.shared.vocab import SEP_NAME

    text = json.dumps(tokenizer_json).replace(f'"{META_PLACEHOLDER_NAME}"', f'"{IMAGE_PLACEHOLDER_NAME}"')
    renamed = json.loads(text)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(renamed)), bos_token="<s>",
                                        eos_token="</s>", pad_token="<pad>", unk_token="<unk>", sep_token=SEP_NAME)
    side = vq_config["resolution"]
    grid = side // 2 ** (len(vq_config["channel_multiplier"]) - 1)
    image_processor = ChameleonImageProcessorPil(size={"shortest_edge": side},
                                                 crop_size={"height": side, "width": side})
    ChameleonProcessor(image_processor, tokenizer, image_seq_length=grid * grid).save_pretrained(dst)
