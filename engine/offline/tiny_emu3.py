"""A tiny random Emu3 checkpoint in the ``-hf`` layout that BAAI publishes (``BAAI/Emu3-Gen-hf``,
``-Chat-hf``), made with transformers' own ``Emu3Config``, ``Emu3ForConditionalGeneration``,
``Emu3ImageProcessor`` and ``Emu3Processor``: ``from_pretrained`` of both loads it unchanged.

What transformers' conversion script (``convert_emu3_weights_to_hf.py``) writes, and so what is written here:
weights under the published names (``text_model.model.*``, ``text_model.lm_head.weight``, ``vqmodel.*``:
transformers 5 maps them on load); ``config.json`` with ``text_config``, ``vq_config`` and the whole vocabulary
as ``vocabulary_map``; ``preprocessor_config.json`` (no ``processor_config.json``); ``chat_template.json``; a
byte-level BPE ``tokenizer.json`` whose special tokens follow Emu3's order (``<|endoftext|>``, ``<|im_start|>``,
``<|im_end|>``, ``<|extra_0..204|>`` with ``<|extra_0|>`` renamed ``<image>``, ``<|image token|>``,
``<|image start|>``, ``<|image end|>``, then one ``<|visual token NNNNNN|>`` per code); bos ``<|extra_203|>``,
eos ``<|extra_204|>``, pad ``<|endoftext|>``, and the processor's named tokens in ``tokenizer_config.json``.
The image processor keeps the published values except its pixel range: from a square of half the tiny
grid's side to that grid's square, so small images give small grids and several sizes can be asked for.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.offline.random_weights import spread_weights
from engine.offline.tiny_spec import TinySpec
from engine.shared.families.emu3 import EOF_NAME, OPENING_NAME

BOS, EOS, PAD = "<|extra_203|>", "<|extra_204|>", "<|endoftext|>"
BOI, EOI, PLACEHOLDER = "<|image start|>", "<|image end|>", "<image>"
NAMED_TOKENS = {"image_token": PLACEHOLDER, "boi_token": BOI, "eoi_token": EOI, "image_wrapper_token": OPENING_NAME,
                "eof_token": EOF_NAME}
_EXTRAS = 205  # <|extra_0|> .. <|extra_204|>
_SPATIAL_FACTOR = 8  # channel_multiplier of four levels, as published
_MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "a"), ("i", "n"), ("e", "r"), ("o", "n"), ("Ġ", "s")]
# The template the conversion script ships, in our words: roles but the system's as "ROLE: ", each message's
# images first as <image>, then its texts each followed by a space; the generation prompt is "ASSISTANT:".
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] != 'system' -%}{{ message['role'] | upper }}: {% endif -%}"
    "{%- for item in message['content'] if item['type'] == 'image' -%}<image>{%- endfor -%}"
    "{%- for item in message['content'] if item['type'] == 'text' -%}"
    "{%- if message['role'] == 'assistant' -%}{% generation %}{{ item['text'] }} {% endgeneration %}"
    "{%- else -%}{{ item['text'] }} {% endif -%}"
    "{%- endfor -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}ASSISTANT:{%- endif -%}"
)


def _byte_symbols() -> list[str]:
    """The byte-level BPE alphabet in byte order (GPT-2's printable stand-ins)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = [], 0
    for b in range(256):
        if b in printable:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def _vocabulary(codebook_size: int) -> tuple[dict[str, int], list[str]]:
    vocab = {s: i for i, s in enumerate(_byte_symbols())}
    for a, b in _MERGES:
        vocab[a + b] = len(vocab)
    extras = (PLACEHOLDER if i == 0 else f"<|extra_{i}|>" for i in range(_EXTRAS))
    specials = [PAD, "<|im_start|>", "<|im_end|>", *extras, OPENING_NAME, BOI, EOI,
                *(f"<|visual token {i:06d}|>" for i in range(codebook_size))]
    for name in specials:
        vocab[name] = len(vocab)
    return vocab, specials


def _tokenizer(codebook_size: int):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Tokenizer

    vocab, specials = _vocabulary(codebook_size)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=list(_MERGES), unk_token=None, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    tokenizer = GPT2Tokenizer(tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=None,
                              add_prefix_space=False, clean_up_tokenization_spaces=False, padding_side="left",
                              extra_special_tokens=dict(NAMED_TOKENS))
    return tokenizer, vocab


def make_tiny_emu3(dst: Path, spec: TinySpec) -> Path:
    """Write the checkpoint of ``spec`` (its grid, codebook, text-model shape, dtype and seed) into ``dst``."""
    from transformers import (
        Emu3Config,
        Emu3ForConditionalGeneration,
        Emu3ImageProcessor,
        Emu3Processor,
        GenerationConfig,
    )

    tokenizer, vocab = _tokenizer(spec.codebook_size)
    side = spec.grid * _SPATIAL_FACTOR
    image_processor = Emu3ImageProcessor(resample=3, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                         min_pixels=(side // 2) ** 2, max_pixels=side * side,
                                         spatial_factor=_SPATIAL_FACTOR)
    processor = Emu3Processor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(dst)
    text_config = {
        "vocab_size": len(vocab), "hidden_size": spec.hidden_size, "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers, "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads, "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": 1e-5, "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
        "attention_dropout": 0.0, "pad_token_id": vocab[PAD], "bos_token_id": vocab[BOS],
        "eos_token_id": vocab[EOS], "tie_word_embeddings": False,
    }
    vq_config = {  # published shape (four levels, temporal factor 4), narrow: GroupNorm needs multiples of 32
        "codebook_size": spec.codebook_size, "embed_dim": 4, "latent_channels": 4, "double_latent": False,
        "in_channels": 3, "out_channels": 3, "temporal_downsample_factor": 4, "base_channels": 32,
        "channel_multiplier": [1, 2, 2, 4], "num_res_blocks": 1, "attn_resolutions": [3], "hidden_size": 128,
        "num_attention_heads": 1, "attention_dropout": 0.0,
    }
    config = Emu3Config(text_config=text_config, vq_config=vq_config, vocabulary_map=vocab, tie_word_embeddings=False,
                        architectures=["Emu3ForConditionalGeneration"])
    torch.manual_seed(spec.seed)
    model = Emu3ForConditionalGeneration(config).eval()
    spread_weights(model.model.text_model, spec.seed)
    spread_weights(model.lm_head, spec.seed + 5)
    model.to(getattr(torch, spec.dtype))
    model.generation_config = GenerationConfig(do_sample=True, top_k=2048, max_new_tokens=50_000,  # the script's
                                               pad_token_id=vocab[PAD], eos_token_id=vocab[EOS])
    model.save_pretrained(dst)  # transformers 5 writes the published weight names
    _as_published(dst, vocab)
    return dst


def _as_published(dst: Path, vocab: dict[str, int]) -> None:
    """Turn what transformers 5 saves into the files the conversion script wrote for BAAI's folders."""
    def load(name: str) -> dict:
        return json.loads((dst / name).read_text(encoding="utf-8"))

    def dump(name: str, obj: dict) -> None:
        (dst / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    image_processor = dict(load("processor_config.json")["image_processor"], processor_class="Emu3Processor")
    dump("preprocessor_config.json", image_processor)
    (dst / "processor_config.json").unlink()
    dump("chat_template.json", {"chat_template": (dst / "chat_template.jinja").read_text(encoding="utf-8")})
    (dst / "chat_template.jinja").unlink()

    tokenizer_json = load("tokenizer.json")
    tokenizer_config = load("tokenizer_config.json")
    tokenizer_config.pop("backend", None)
    tokenizer_config.update(NAMED_TOKENS, extra_special_tokens=dict(NAMED_TOKENS))
    keys = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
    tokenizer_config["added_tokens_decoder"] = {str(t["id"]): {k: t[k] for k in keys}
                                                for t in tokenizer_json["added_tokens"]}
    dump("tokenizer_config.json", dict(sorted(tokenizer_config.items())))
    tokenizer_json["post_processor"] = None  # the script's tokenizer.json adds nothing around a text
    tokenizer_json["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                                 "use_regex": True}
    dump("tokenizer.json", tokenizer_json)
    dump("special_tokens_map.json", {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD})
    dump("vocab.json", vocab)
    merges = [" ".join(m) if isinstance(m, list | tuple) else m for m in tokenizer_json["model"]["merges"]]
    (dst / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges), encoding="utf-8")

    config = load("config.json")  # the conversion's transformers wrote RoPE as rope_theta + rope_scaling
    text = config["text_config"]
    rope = text.pop("rope_parameters", None) or {}
    text.update(rope_theta=rope.get("rope_theta", 1_000_000.0), rope_scaling={"rope_type": rope.get("rope_type",
                                                                                                     "default")})
    if "dtype" in config:
        config["torch_dtype"] = config.pop("dtype")
    dump("config.json", config)
