"""Checks of a checkpoint folder before any engine starts: a malformed one fails with one message that
names the file and the fix, instead of a traceback from deep inside vLLM minutes later.

Reads only small files (JSON and YAML); the weights are vLLM's to load.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.frontend.images import ImagePreprocessor
from engine.frontend.vqgan import VQGANConfig
from engine.shared.families import for_architectures, served_architectures
from engine.shared.families.emu3 import spatial_factor
from engine.shared.processor_settings import image_processor_settings
from engine.shared.vocab import CheckpointError, TokenLayout


def preflight(model: str | Path, vqgan: str | Path | None) -> Path | None:
    """Raise CheckpointError for a checkpoint that cannot be served; return the VQGAN decoder to use for
    image output (``vqgan``, else ``vqgan.ckpt`` beside the model), or None when there is none."""
    model_dir = Path(model)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{config_path} not found: pass a Hugging Face-layout checkpoint folder, or Meta's "
                              "release folder (models/<size>/, tokenizer/), which is converted on first use")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path} is not valid JSON ({e})") from None
    _check_architecture(config, config_path)
    try:
        layout = TokenLayout.from_checkpoint(model_dir)
    except CheckpointError as e:  # name the file where the message does not
        raise CheckpointError(str(e) if str(config_path) in str(e) else f"{config_path}: {e}") from None
    family = for_architectures(config.get("architectures") or [])
    if not config.get("vq_config"):
        raise CheckpointError(f"{config_path} has no vq_config: the image tokenizer's shape is unknown")
    if family.codec == "emu3":
        if vqgan:
            raise CheckpointError(f"--vqgan {vqgan}: an Emu3 checkpoint decodes images with the VQ model in its own "
                                  "weights; leave --vqgan out")
        return _check_emu3(model_dir, config, layout)
    ImagePreprocessor.from_checkpoint(model_dir, family)
    encoder = VQGANConfig.from_hf_vq_config(config["vq_config"])
    if encoder.n_embed != layout.codebook_size:
        raise CheckpointError(f"{config_path}: vq_config has {encoder.n_embed} codes but vocabulary_map has "
                              f"{layout.codebook_size} image tokens: the tokenizer and the VQGAN are from different "
                              "models")
    if encoder.grid ** 2 != layout.image_seq_length:
        raise CheckpointError(f"{model_dir / 'processor_config.json'}: image_seq_length {layout.image_seq_length} "
                              f"but the VQGAN writes {encoder.grid}x{encoder.grid} codes per image")
    return _check_decoder(model_dir, vqgan, encoder)


def _check_emu3(model_dir: Path, config: dict, layout: TokenLayout) -> Path:
    """An Emu3 ``-hf`` folder (its text_config checked with the layout): a VQ model of the vocabulary's
    codebook, Emu3's image processor of the VQ model's downsampling. Its decoder is in the weights, so image
    output needs nothing more: the folder itself is returned as the decoder's place."""
    config_path = model_dir / "config.json"
    codes = config["vq_config"].get("codebook_size", 32768)
    if codes != layout.codebook_size:
        raise CheckpointError(f"{config_path}: vq_config has {codes} codes but vocabulary_map has "
                              f"{layout.codebook_size} visual tokens: the tokenizer and the VQ model are from "
                              "different models")
    settings = image_processor_settings(model_dir)
    if settings is None:
        raise CheckpointError(f"{model_dir}: no image-processor settings (processor_config.json, or "
                              "preprocessor_config.json as published): Emu3's image processor (Emu3ImageProcessor) "
                              "is needed to read images")
    factor = spatial_factor(config)
    if settings.get("spatial_factor", 8) != factor:
        raise CheckpointError(f"{model_dir}: the image processor's spatial_factor {settings.get('spatial_factor')} "
                              f"but the VQ model downsamples by {factor}")
    return model_dir


def _check_architecture(config: dict, config_path: Path) -> None:
    architectures = config.get("architectures") or []
    served_names = served_architectures()
    if any(name in served_names for name in architectures):
        return
    served = ", ".join(f"{name} ({family})" for name, family in served_names.items())
    raise CheckpointError(f"{config_path}: architectures {architectures} is not a Chameleon checkpoint; "
                          f"this server serves {served}")


def _check_decoder(model_dir: Path, vqgan: str | Path | None, encoder: VQGANConfig) -> Path | None:
    path = Path(vqgan) if vqgan else model_dir / "vqgan.ckpt"
    if not path.is_file():
        if vqgan:
            raise CheckpointError(f"{path} does not exist: pass --vqgan PATH/vqgan.ckpt (vqgan.yaml beside it)")
        return None
    yaml_path = path.with_name("vqgan.yaml")
    if not yaml_path.is_file():
        raise CheckpointError(f"{yaml_path} not found: Meta's VQGAN needs its yaml beside {path.name}")
    decoder = VQGANConfig.from_meta_yaml(yaml_path)
    if decoder.n_embed != encoder.n_embed:
        raise CheckpointError(f"{yaml_path}: the VQGAN has {decoder.n_embed} codes, the model {encoder.n_embed}: "
                              "use the VQGAN released with this model")
    if decoder.grid != encoder.grid:
        raise CheckpointError(f"{yaml_path}: the VQGAN decodes a {decoder.grid}-code grid, the model writes "
                              f"{encoder.grid}: use the VQGAN released with this model")
    return path
