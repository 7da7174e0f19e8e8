"""Which family a checkpoint is: Lumina-mGPT by its config's architecture, Anole by its name or model card."""

from __future__ import annotations

import json

from engine.shared.families import ANOLE, CHAMELEON, LUMINA, recognize


def test_recognize(tmp_path):
    hf = tmp_path / "converted"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"architectures": ["ChameleonForConditionalGeneration"]}))
    assert recognize(tmp_path / "chameleon-7b", hf) is CHAMELEON
    assert recognize(tmp_path / "Anole-7b-v0.1", hf) is ANOLE
    card = tmp_path / "release"
    card.mkdir()
    (card / "README.md").write_text("---\nlicense: other\n---\n# Anole: An Open, Autoregressive, Native ...\n")
    assert recognize(card, hf) is ANOLE
    (hf / "config.json").write_text(json.dumps({"architectures": ["ChameleonXLLMXForConditionalGeneration"]}))
    assert recognize(tmp_path / "Lumina-mGPT-7B-768", hf) is LUMINA
    assert recognize(tmp_path / "missing", tmp_path / "missing") is CHAMELEON  # the preflight judges it


def test_authors_defaults():
    anole, lumina = ANOLE.sampling, LUMINA.sampling
    assert (anole.image_temperature, anole.image_top_k, anole.image_top_p) == (0.7, 0, 0.9)
    assert anole.cfg_scale == 3.0 and CHAMELEON.sampling.cfg_scale == 1.0
    assert (lumina.image_top_k, lumina.cfg_scale, lumina.text_top_k, lumina.image_temperature) == (2000, 3.0, 10, 1.0)
