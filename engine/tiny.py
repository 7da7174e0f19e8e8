"""Deterministic tiny Chameleon checkpoints in the real on-disk layouts.

Random weights, real formats: the Hugging Face layout written by transformers'
own ``save_pretrained`` (``config.json`` with ``vocabulary_map``,
``model.safetensors`` holding the transformer and ``model.vqmodel.*`` encoder,
``tokenizer.json``, ``processor_config.json``) plus a VQGAN in Meta's release
format (``vqgan.ckpt`` + ``vqgan.yaml``) for decoding generated images. It is the
embedded default model of ``make serve`` and the fixture of the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from engine.vocab import BOI_NAME, EOI_NAME, IMAGE_PLACEHOLDER_NAME, SEP_NAME, code_name

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


@dataclass(frozen=True, slots=True)
class TinySpec:
    """Shape of a tiny checkpoint; ``grid`` x ``grid`` codes per image."""

    grid: int = 32
    codebook_size: int = 8192
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 352
    bpe_merges: int = 400
    swin_norm: bool = False
    dtype: str = "float32"
    seed: int = 0
    max_position_embeddings: int = 4096

    def __post_init__(self) -> None:
        if self.hidden_size // self.num_heads < 32:
            raise ValueError("head_dim must be >= 32 (vLLM's CPU attention rejects smaller heads)")
        if self.grid < 2 or self.codebook_size < 2:
            raise ValueError("grid and codebook_size must be >= 2")

    @property
    def resolution(self) -> int:
        """Image side in pixels: the VQ encoder downsamples by 2 (one down level)."""
        return 2 * self.grid


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
              __import__("json").loads(trainer_tok.to_str())["model"]["merges"]]

    fixed = [*_TEXT_SPECIALS, *(code_name(i) for i in range(spec.codebook_size)),
             EOI_NAME, BOI_NAME, SEP_NAME, IMAGE_PLACEHOLDER_NAME]
    vocab = {name: i for i, name in enumerate(fixed)}
    for name, _ in sorted(learned.items(), key=lambda kv: kv[1]):
        vocab.setdefault(name, len(vocab))

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [*_TEXT_SPECIALS, EOI_NAME, BOI_NAME, SEP_NAME, IMAGE_PLACEHOLDER_NAME]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return tok, vocab


def make_tiny(dst: str | Path, spec: TinySpec = TinySpec()) -> Path:
    """Write a tiny checkpoint into ``dst`` and return it; same spec, same bytes."""
    from transformers import (
        ChameleonConfig,
        ChameleonForConditionalGeneration,
        ChameleonProcessor,
        PreTrainedTokenizerFast,
    )
    from transformers.models.chameleon.image_processing_pil_chameleon import ChameleonImageProcessorPil

    from engine.vqgan import write_meta_vqgan

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    tok, vocab = _build_tokenizer(spec)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", sep_token=SEP_NAME,
    )
    vq_config = dict(
        embed_dim=32, num_embeddings=spec.codebook_size, double_latent=False, latent_channels=32,
        resolution=spec.resolution, in_channels=3, base_channels=32, channel_multiplier=[1, 2],
        num_res_blocks=1, attn_resolutions=[], dropout=0.0, attn_type="vanilla",
    )
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
    _spread_weights(model, spec.seed)
    model.to(getattr(torch, spec.dtype)).save_pretrained(dst)

    image_processor = ChameleonImageProcessorPil(
        size={"shortest_edge": spec.resolution},
        crop_size={"height": spec.resolution, "width": spec.resolution},
    )
    ChameleonProcessor(image_processor, tokenizer, image_seq_length=spec.grid * spec.grid).save_pretrained(dst)
    vq_state = {k.removeprefix("model.vqmodel."): v.float() for k, v in model.state_dict().items()
                if k.startswith("model.vqmodel.")}
    write_meta_vqgan(dst, vq_state, vq_config, seed=spec.seed)
    return dst


def _spread_weights(model: torch.nn.Module, seed: int) -> None:
    """Give the random model decisive logits, varied norms and a VQ encoder with varied codes.

    transformers' initialisation (std 0.02, zero biases, unit norms) gives near-uniform
    logits, where greedy ties make token-for-token comparisons meaningless, and
    unit qk-norm scales and zero shifts, where a per-head norm applied to the wrong
    heads (or in the wrong place, as with swin-norm) would go unnoticed.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                is_scale = name.endswith("weight")
                noise = torch.rand(p.shape, generator=gen) if is_scale else torch.randn(p.shape, generator=gen)
                p.copy_(0.5 + noise if is_scale else 0.3 * noise)
                continue
            fan_in = p[0].numel() if p.dim() > 1 else p.numel()
            p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
