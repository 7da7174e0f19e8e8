"""Server settings: built once by ``cli.py``, never mutated, handed to ``create_app``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from engine.shared.families import CHAMELEON, Family
from schemas.chat import ImageOutputFormat
from server.image_urls import RemoteImagePolicy

IMAGE_OUTPUT_FORMATS: tuple[str, ...] = get_args(ImageOutputFormat)


@dataclass(frozen=True, slots=True)
class Settings:
    model: str
    served_model_name: str
    engine_args: Any = field(repr=False)  # vllm AsyncEngineArgs, passed through untouched
    host: str = "0.0.0.0"
    port: int = 8000
    api_key: str | None = None
    max_images_per_request: int = 8
    max_image_pixels: int = 4096 * 4096
    chat_template: str | None = None
    vqgan: Path | None = None  # Meta's vqgan.ckpt (yaml beside it) for image output; None: text and image input only
    max_body_bytes: int = 32 * 1024 * 1024
    max_queued_requests: int | None = None  # beyond the engine's max_num_seqs running; None = unbounded
    shutdown_grace_s: float = 30.0
    remote_images: RemoteImagePolicy = field(default_factory=RemoteImagePolicy)  # off unless hosts are allowlisted
    image_output_format: str = "content_parts"  # chat replies' image shape unless a request names one
    playground: bool = True  # the browser page at GET /
    family: Family = CHAMELEON  # the checkpoint's family: its authors' sampling defaults (engine/shared/families/)

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} out of range")
        if self.max_images_per_request < 0:
            raise ValueError("max_images_per_request must be >= 0")
        if self.max_image_pixels <= 0:
            raise ValueError("max_image_pixels must be > 0")
        if self.shutdown_grace_s < 0:
            raise ValueError("shutdown_grace_s must be >= 0")
        if self.max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be > 0")
        if self.max_queued_requests is not None and self.max_queued_requests < 0:
            raise ValueError("max_queued_requests must be >= 0")
        if self.image_output_format not in IMAGE_OUTPUT_FORMATS:
            raise ValueError(f"image_output_format must be one of {', '.join(IMAGE_OUTPUT_FORMATS)}")
        if self.api_key == "":
            raise ValueError("api_key must not be empty")
