"""Deterministic tiny Chameleon checkpoints in the real on-disk layouts.

Random weights, real formats: the Hugging Face layout written by transformers'
own ``save_pretrained`` (``config.json`` with ``vocabulary_map``,
``model.safetensors`` holding the transformer and ``model.vqmodel.*`` encoder,
``tokenizer.json``, ``processor_config.json``) plus a VQGAN in Meta's release
format (``vqgan.ckpt`` + ``vqgan.yaml``) for decoding generated images. It is the
embedded default model of ``make serve`` and the fixture of the tests. Another ``family`` writes its
checkpoint as that family's authors publish theirs, with its own tokens (``Family.save_tiny`` and
``Family.tiny_special_tokens`` in ``engine/shared/families/``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.offline.random_weights import spread, spread_weights
from engine.offline.tiny_spec import TinySpec
from engine.shared.families import Family, by_name
from engine.shared.vocab import BOI_NAME, EOI_NAME, IMAGE_PLACEHOLDER_NAME, SEP_NAME, code_name

# A fixed corpus makes the byte-level BPE merges (and so the token ids) reproducible.
_CORPUS = """\
The quick brown fox jumps over the lazy dog. A picture is worth a thousand words.
Describe the image in detail. What is shown in this picture? Draw a red circle on a
white background. Here is an image of a cat sitting on a mat. The sky is blue and the
grass is green. Once upon a time there was a little robot who liked to paint. Please
write a short story about the sea, the mountains and the stars at night. Hello, world!
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Colors: red, green, blue, yellow, purple.
User: can you generate an image? Assistant: yes, here it is. Thank you very much.
"""
_TEXT_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


def _build_tokenizer(spec: TinySpec):
    """Byte-level BPE whose first ids mirror Chameleon's: text specials, image codes, BOI/EOI."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=256 + spec.bpe_merges,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    trainer_tok.train_from_iterator([_CORPUS], trainer=trainer)
    learned = trainer_tok.get_vocab()
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in
              json.loads(trainer_tok.to_str())["model"]["merges"]]

    fixed = [*_TEXT_SPECIALS, *(code_name(i) for i in range(spec.codebook_size)),
             EOI_NAME, BOI_NAME, SEP_NAME, IMAGE_PLACEHOLDER_NAME, *by_name(spec.family).tiny_special_tokens(spec.grid)]
    vocab = {name: i for i, name in enumerate(fixed)}
    for name, _ in sorted(learned.items(), key=lambda kv: kv[1]):
        vocab.setdefault(name, len(vocab))

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [*_TEXT_SPECIALS, EOI_NAME, BOI_NAME, SEP_NAME, IMAGE_PLACEHOLDER_NAME,
                *by_name(spec.family).tiny_special_tokens(spec.grid)]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return tok, vocab


def make_tiny(dst: str | Path, spec: TinySpec = TinySpec()) -> Path:
    """Write a tiny checkpoint of ``spec.family`` into ``dst`` and return it; same spec, same bytes."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    family = by_name(spec.family)
    if family.codec == "emu3":
        from engine.offline.tiny_emu3 import make_tiny_emu3

        return make_tiny_emu3(dst, spec)
    return make_tiny_chameleon(dst, spec, family)


def make_tiny_chameleon(dst: Path, spec: TinySpec, family: Family) -> Path:
    """transformers' Chameleon model, written as ``family`` publishes it, with Meta's VQGAN beside it."""
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration, PreTrainedTokenizerFast

    from engine.frontend.vqgan import write_meta_vqgan

    tok, vocab = _build_tokenizer(spec)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", sep_token=SEP_NAME,
    )
    vq_config = _vqgan_config(spec).to_hf_vq_config()
    config = ChameleonConfig(
        vocab_size=len(vocab), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"],
        swin_norm=spec.swin_norm, vq_config=vq_config, vocabulary_map=vocab,
        initializer_range=0.1, architectures=["ChameleonForConditionalGeneration"],
    )
    torch.manual_seed(spec.seed)
    model = ChameleonForConditionalGeneration(config).eval()
    spread_weights(model, spec.seed)
    if spec.input_independent:
        _share_embedding(model)
    model.to(getattr(torch, spec.dtype))
    family.save_tiny(model, tokenizer, dst, spec.resolution, spec.grid)
    vq_state = {k.removeprefix("model.vqmodel."): v.float() for k, v in model.state_dict().items()
                if k.startswith("model.vqmodel.")}
    write_meta_vqgan(dst, vq_state, vq_config, seed=spec.seed)
    return dst


def _share_embedding(model: torch.nn.Module) -> None:
    """Every row of the token embedding becomes row 0. Attention then averages identical values whatever its
    weights and RoPE, so every position's logits are the same: the spread weights alone give a clearly
    non-uniform distribution over the codes (no extra scaling needed)."""
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb.copy_(emb[0].expand_as(emb))


def make_tiny_meta(dst: str | Path, spec: TinySpec = TinySpec(), shards: int = 1) -> Path:
    """A tiny release in Meta's original layout (``models/7b/consolidated*.pth``, ``params.json``,
    ``tokenizer/{text_tokenizer.json, vqgan.ckpt, vqgan.yaml}``), split into ``shards`` tensor-parallel
    files the way Meta's multi-GPU checkpoints are, each shard with its own qk-norm parameters."""
    from engine.frontend.vqgan import VQModel, write_meta_vqgan
    from engine.offline.meta_layout import META_PLACEHOLDER_NAME

    dst = Path(dst)
    model_dir, tokenizer_dir = dst / "models" / "7b", dst / "tokenizer"
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    tok, vocab = _build_tokenizer(spec)
    (tokenizer_dir / "text_tokenizer.json").write_text(
        tok.to_str().replace(f'"{IMAGE_PLACEHOLDER_NAME}"', f'"{META_PLACEHOLDER_NAME}"'))

    dim, heads, kv_heads = spec.hidden_size, spec.num_heads, spec.num_kv_heads
    head_dim, multiple_of = dim // heads, 32
    ffn = multiple_of * -(-int(8 * dim / 3) // multiple_of)
    params = {"model_parallel_size": shards, "model": {
        "dim": dim, "n_layers": spec.num_layers, "n_heads": heads, "n_kv_heads": kv_heads, "vocab_size": len(vocab),
        "multiple_of": multiple_of, "ffn_dim_multiplier": None, "norm_eps": 1e-5, "rope_theta": 10000.0,
        "qk_normalization": True, "swin_norm": spec.swin_norm}}
    (model_dir / "params.json").write_text(json.dumps(params, indent=2))

    gen = torch.Generator().manual_seed(spec.seed + 2)
    # Full tensors with the dimension that shards split on (None: each shard holds its own copy).
    full: dict[str, tuple[tuple[int, ...], int | None]] = {
        "tok_embeddings.weight": ((len(vocab), dim), 1), "output.weight": ((len(vocab), dim), 0),
        "norm.weight": ((dim,), None)}
    for i in range(spec.num_layers):
        full.update({
            f"layers.{i}.attention.wq.weight": ((heads * head_dim, dim), 0),
            f"layers.{i}.attention.wk.weight": ((kv_heads * head_dim, dim), 0),
            f"layers.{i}.attention.wv.weight": ((kv_heads * head_dim, dim), 0),
            f"layers.{i}.attention.wo.weight": ((dim, heads * head_dim), 1),
            f"layers.{i}.feed_forward.w1.weight": ((ffn, dim), 0),
            f"layers.{i}.feed_forward.w3.weight": ((ffn, dim), 0),
            f"layers.{i}.feed_forward.w2.weight": ((dim, ffn), 1),
            f"layers.{i}.attention_norm.weight": ((dim,), None), f"layers.{i}.ffn_norm.weight": ((dim,), None),
        })
    tensors = {name: spread(name, shape, gen) for name, (shape, _) in full.items()}
    states: list[dict[str, torch.Tensor]] = [{} for _ in range(shards)]
    for name, (_, dim_split) in full.items():
        for state, part in zip(states, tensors[name].chunk(shards, dim_split) if dim_split is not None
                               else [tensors[name]] * shards, strict=True):
            state[name] = part.clone().to(getattr(torch, spec.dtype))
    for state in states:  # per-shard qk-norm: one LayerNorm over head_dim for that shard's heads
        for i in range(spec.num_layers):
            for norm in ("q_normalization", "k_normalization"):
                for part in ("weight", "bias"):
                    name = f"layers.{i}.attention.{norm}.{part}"
                    state[name] = spread(name, (head_dim,), gen).to(getattr(torch, spec.dtype))
    names = ["consolidated.pth"] if shards == 1 else [f"consolidated.{k:02d}.pth" for k in range(shards)]
    for name, state in zip(names, states, strict=True):
        torch.save(state, model_dir / name)

    cfg = _vqgan_config(spec)
    encoder = VQModel(cfg, with_decoder=False)
    vq_gen = torch.Generator().manual_seed(spec.seed + 3)  # independent of the shard count
    encoder.load_state_dict({k: spread(k, v.shape, vq_gen) for k, v in encoder.state_dict().items()})
    write_meta_vqgan(tokenizer_dir, encoder.state_dict(), cfg.to_hf_vq_config(), seed=spec.seed)
    return dst


def _vqgan_config(spec: TinySpec):
    """A small VQGAN: one downsampling level, so ``grid`` codes per side at ``spec.resolution`` pixels."""
    from engine.frontend.vqgan import VQGANConfig

    return VQGANConfig(embed_dim=32, n_embed=spec.codebook_size, z_channels=32, resolution=spec.resolution,
                       ch=32, ch_mult=(1, 2), num_res_blocks=1)
