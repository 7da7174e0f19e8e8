"""Meta's original release layout: conversion to the Hugging Face layout is lossless."""

from __future__ import annotations

import pytest
import torch
from meta_reference import meta_logits
from safetensors.torch import load_file

from engine.offline.meta_layout import convert_meta_checkpoint, find_meta_model_dir
from engine.offline.tiny import TinySpec, make_tiny_meta
from engine.shared.vocab import CheckpointError, TokenLayout

SPEC = TinySpec(grid=4, codebook_size=64)


@pytest.mark.parametrize("swin_norm", [False, True])
def test_converted_logits_equal_the_original_layouts(tmp_path, swin_norm):
    from transformers import ChameleonForConditionalGeneration

    spec = TinySpec(grid=4, codebook_size=64, swin_norm=swin_norm)
    release = make_tiny_meta(tmp_path / "meta", spec)
    converted = convert_meta_checkpoint(release, tmp_path / "hf")
    model = ChameleonForConditionalGeneration.from_pretrained(converted).eval()
    layout = TokenLayout.from_checkpoint(converted)
    ids = [model.config.bos_token_id, 300, 301, 302, layout.boi, *layout.code_to_id[:16], layout.eoi, 303, 304]
    with torch.no_grad():
        theirs = model(input_ids=torch.tensor([ids])).logits[0]
    text = torch.ones(theirs.shape[-1], dtype=torch.bool)
    text[list(layout.code_to_id)] = False  # transformers' Chameleon sets image-code logits to the float minimum
    assert torch.allclose(theirs[:, text], meta_logits(release, ids)[:, text], atol=1e-4, rtol=1e-4)
    assert model.config.swin_norm is swin_norm


def test_tensor_parallel_shards_convert_to_the_same_model(tmp_path):
    whole = load_file(convert_meta_checkpoint(make_tiny_meta(tmp_path / "a", SPEC), tmp_path / "a-hf")
                      / "model.safetensors")
    split = load_file(convert_meta_checkpoint(make_tiny_meta(tmp_path / "b", SPEC, shards=2), tmp_path / "b-hf")
                      / "model.safetensors")
    assert whole.keys() == split.keys()
    differ = {k for k in whole if not torch.equal(whole[k], split[k])}
    # Same seeded tensors either way, except qk-norm: each of the two shards has its own for its heads.
    assert differ and all("q_norm" in k or "k_norm" in k for k in differ)
    q_norm = split["model.layers.0.self_attn.q_norm.weight"]  # (heads, head_dim): shard 0's, then shard 1's
    assert torch.equal(q_norm[0], q_norm[1]) and not torch.equal(q_norm[1], q_norm[2])


def test_converted_layout_has_what_the_server_reads(tmp_path):
    converted = convert_meta_checkpoint(make_tiny_meta(tmp_path / "meta", SPEC), tmp_path / "hf")
    layout = TokenLayout.from_checkpoint(converted)
    assert layout.image_placeholder is not None and len(layout.code_to_id) == SPEC.codebook_size
    assert (converted / "vqgan.ckpt").exists() and (converted / "processor_config.json").exists()
    assert "<reserved08707>" not in (converted / "tokenizer.json").read_text()


def test_not_a_meta_release(tmp_path):
    assert find_meta_model_dir(tmp_path) is None
    with pytest.raises(CheckpointError, match="not a Meta-layout Chameleon release"):
        convert_meta_checkpoint(tmp_path, tmp_path / "out")
