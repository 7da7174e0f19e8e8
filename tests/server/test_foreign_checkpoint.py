"""Any HF-layout Chameleon checkpoint written by transformers' ``save_pretrained`` serves correctly.

This one is not made by our generator: transformers' own initialisation, the
swin-norm variant, no GQA, a 8x8 grid, two resolutions of attention in the VQ
encoder, and a vocabulary whose image codes sit at the END, in reverse codebook
order, so nothing can lean on Chameleon-7b's id positions. It carries its own
chat template (roles written, ``<image>`` per image), which replaces our default
format. Its VQGAN decoder is a Meta-format ``vqgan.ckpt`` in another folder,
passed with ``--vqgan``.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
import torch
from conftest import MODEL, start_server, stop_server
from oracle import HFOracle
from PIL import Image
from testimages import noise_image, user_message
from tokenizers import Tokenizer
from transformers import (
    ChameleonConfig,
    ChameleonForConditionalGeneration,
    ChameleonProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.chameleon.image_processing_pil_chameleon import ChameleonImageProcessorPil

from engine.frontend.vqgan import write_meta_vqgan
from engine.offline.tiny import TinySpec, _build_tokenizer
from engine.shared.vocab import SEP_NAME, TokenLayout

GRID, CODES = 8, 256
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}"
    "{% if c['type'] == 'text' %}{{ c['text'] }}{% else %}<image>{% endif %}{% endfor %}<reserved08706>"
    "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


def _codes_last(tok: Tokenizer, vocab: dict[str, int]) -> tuple[Tokenizer, dict[str, int]]:
    """Renumber: every non-code token first (in its old order), then the codes in reverse codebook order."""
    codes = [n for n in vocab if n.startswith("IMGIMG")]
    others = [n for n in sorted(vocab, key=vocab.get) if not n.startswith("IMGIMG")]
    new = {name: i for i, name in enumerate(others + codes[::-1])}
    spec = json.loads(tok.to_str())
    spec["model"]["vocab"] = new
    for added in spec["added_tokens"]:
        added["id"] = new[added["content"]]
    spec["post_processor"]["special_tokens"]["<s>"]["ids"] = [new["<s>"]]
    return Tokenizer.from_str(json.dumps(spec)), new


def write_foreign_checkpoint(dst: Path) -> Path:
    tok, vocab = _codes_last(*_build_tokenizer(TinySpec(grid=GRID, codebook_size=CODES)))
    config = ChameleonConfig(
        vocab_size=len(vocab), hidden_size=256, intermediate_size=512, num_hidden_layers=3, num_attention_heads=8,
        num_key_value_heads=8, swin_norm=True, initializer_range=0.2, vocabulary_map=vocab,
        bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"],
        vq_config=dict(embed_dim=16, num_embeddings=CODES, latent_channels=16, resolution=2 * GRID, base_channels=32,
                       channel_multiplier=[1, 2], num_res_blocks=2, attn_resolutions=[GRID]),
    )
    torch.manual_seed(1)
    model = ChameleonForConditionalGeneration(config)
    model.save_pretrained(dst)
    vq_state = {k.removeprefix("model.vqmodel."): v for k, v in model.state_dict().items() if ".vqmodel." in k}
    write_meta_vqgan(dst.parent / f"{dst.name}-vqgan", vq_state, config.vq_config.to_dict(), seed=3)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>", sep_token=SEP_NAME)
    tokenizer.chat_template = CHAT_TEMPLATE
    image_processor = ChameleonImageProcessorPil(size={"shortest_edge": 2 * GRID},
                                                 crop_size={"height": 2 * GRID, "width": 2 * GRID})
    ChameleonProcessor(image_processor, tokenizer, image_seq_length=GRID * GRID).save_pretrained(dst)
    return dst


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    model_dir = write_foreign_checkpoint(tmp_path_factory.mktemp("foreign"))
    vqgan = model_dir.parent / f"{model_dir.name}-vqgan" / "vqgan.ckpt"
    live = start_server(model_dir, tmp_path_factory.mktemp("foreign-logs") / "server.log", "--vqgan", str(vqgan))
    yield live, HFOracle(model_dir)
    stop_server(live)


@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_foreign_checkpoint_greedy_parity(foreign, n_images):
    live, oracle = foreign
    images = [noise_image(10 + i, size=(40 + 9 * i, 30)) for i in range(n_images)]
    text = "Compare these pictures."
    resp = live.client().chat.completions.create(
        model=MODEL, messages=[user_message(text, images)], temperature=0, max_tokens=16,
        extra_body={"return_token_ids": True})
    prompt = oracle.prompt_ids(text, images)
    assert resp.prompt_token_ids == prompt
    assert oracle.processor.tokenizer.decode(prompt[:12]).startswith("<s>user: Comp")  # the template's format
    assert resp.choices[0].token_ids == oracle.greedy(text, images, 16)
    assert "swin_norm=True" in live.log()


def test_foreign_checkpoint_writes_images_with_meta_vqgan(foreign):
    live, _ = foreign
    resp = live.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "draw"}], modalities=["image"], n=2, seed=3,
        extra_body={"return_token_ids": True})
    layout = TokenLayout.from_checkpoint(live.model_dir)
    for choice in resp.choices:
        ids = choice.token_ids
        assert ids[0] == layout.boi and ids[-1] == layout.eoi and len(ids) == GRID * GRID + 2
        [part] = choice.message.content
        png = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
        assert Image.open(io.BytesIO(png)).size == (2 * GRID, 2 * GRID)
