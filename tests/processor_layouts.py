"""A checkpoint folder in each layout transformers reads its processor from: as today's ``save_pretrained``
writes it (``processor_config.json`` nesting the image processor's settings, ``chat_template.jinja``) and as
published checkpoints have it (``preprocessor_config.json``, ``chat_template.json``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "chat_template.json", "chat_template.jinja")


def as_saved_today(src: Path, dst: Path) -> Path:
    """``src`` with its processor loaded and saved again by transformers (``AutoProcessor``)."""
    from transformers import AutoProcessor

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*PROCESSOR_FILES))
    AutoProcessor.from_pretrained(src).save_pretrained(dst)
    assert (dst / "processor_config.json").is_file() and not (dst / "preprocessor_config.json").exists()
    return dst


def as_published(today: Path, dst: Path) -> Path:
    """Today's layout turned into the published one: the image processor's settings in a file of their own,
    the chat template inside JSON."""
    shutil.copytree(today, dst)
    processor = json.loads((dst / "processor_config.json").read_text())
    (dst / "preprocessor_config.json").write_text(json.dumps(processor.pop("image_processor")))
    (dst / "processor_config.json").write_text(json.dumps(processor))
    if (dst / "chat_template.jinja").is_file():
        template = (dst / "chat_template.jinja").read_text()
        (dst / "chat_template.json").write_text(json.dumps({"chat_template": template}))
        (dst / "chat_template.jinja").unlink()
    return dst
