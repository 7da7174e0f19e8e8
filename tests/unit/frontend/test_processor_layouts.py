"""A checkpoint's processor saved both ways transformers reads: as today's ``save_pretrained`` writes it
(``processor_config.json`` nesting the image processor, ``chat_template.jinja``) and as published checkpoints
have it (``preprocessor_config.json``, ``chat_template.json``). Both must give the same layout, sizes, input
codes, edit cells and chat template. Lumina-mGPT's folders hold no processor settings in either."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from processor_layouts import as_published, as_saved_today

from engine.frontend.client import _image_codec, processor_chat_template
from engine.offline.preflight import preflight
from engine.offline.tiny import TinySpec, make_tiny
from engine.shared.families import by_name
from engine.shared.vocab import TokenLayout


def noise_image(seed: int, size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def what_is_served(model_dir: Path, family: str, images: list[Image.Image], mask: Image.Image) -> dict:
    layout = TokenLayout.from_checkpoint(model_dir)
    tokenizer, painter = _image_codec(str(model_dir), by_name(family), preflight(model_dir, None),
                                      torch.device("cpu"))
    assert painter is not None
    sizes = by_name(family).image_sizes(layout.span, tokenizer.pixels_per_code, str(model_dir))
    return {"layout": layout, "sizes": sizes, "codes": tokenizer.encode_spans(images),
            "cells": tokenizer.editable_cells(mask).tolist(), "template": processor_chat_template(model_dir)}


@pytest.mark.parametrize("family", ["chameleon", "emu3"])
def test_both_layouts_serve_the_same(family, tmp_path):
    written = make_tiny(tmp_path / "written", TinySpec(grid=4, codebook_size=64, family=family))
    today = as_saved_today(written, tmp_path / "today")
    published = as_published(today, tmp_path / "published")
    images = [noise_image(1, size=(32, 32)), noise_image(2, size=(40, 30))]
    alpha = np.full((30, 40), 255, np.uint8)
    alpha[:, :12] = 0  # the left edge is to change
    mask = Image.fromarray(np.dstack([np.zeros((30, 40, 3), np.uint8), alpha]), "RGBA")
    ours, theirs = (what_is_served(d, family, images, mask) for d in (today, published))
    assert ours == theirs
    assert (ours["template"] is not None) == (family == "emu3")
    if family == "emu3":  # its processor range (256..1024 px), not the authors' 720 x 720 defaults
        assert ours["sizes"].default == (4, 4) and ours["sizes"].grid("64x16") == (2, 8)
        assert np.array(ours["cells"]).shape == (3, 4)  # 40x30 is read as 32x24
