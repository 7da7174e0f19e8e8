"""A checkpoint's processor settings, read by transformers' own loaders, so that every layout transformers reads
is read here alike: today's ``save_pretrained`` nests the image processor's settings in ``processor_config.json``
and writes a chat template as ``chat_template.jinja``; published checkpoints (``facebook/chameleon-7b``,
``BAAI/Emu3-Gen-hf``) keep them in ``preprocessor_config.json`` and ``chat_template.json``.
"""

from __future__ import annotations

from pathlib import Path


def processor_settings(model_dir: str | Path) -> dict:
    """The processor's own settings (Chameleon's ``image_seq_length``) with the chat template it saved, as
    ``ProcessorMixin.get_processor_dict`` finds them; empty where the checkpoint saved none."""
    from transformers.processing_utils import ProcessorMixin

    settings, _ = ProcessorMixin.get_processor_dict(str(model_dir), local_files_only=True)
    return settings


def image_processor_settings(model_dir: str | Path) -> dict | None:
    """The image processor's saved settings, as ``ImageProcessingMixin.get_image_processor_dict`` finds them in
    either layout; None where the checkpoint saved none."""
    from transformers.image_processing_base import ImageProcessingMixin

    try:
        settings, _ = ImageProcessingMixin.get_image_processor_dict(str(model_dir), local_files_only=True)
    except OSError:
        return None
    return settings
