"""What the model runner in use can do with a checkpoint, stated once: the front end admits requests by it
(``server/pipeline.py``) and the worker's adapter applies it (``engine/worker/runner_v2.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.shared.request_options import IMAGE_ONLY, TEXT_ONLY

V2_SPAN_GUIDANCE = ("on vLLM's Model Runner V2 this model's guidance (from the image alone) runs in image-only "
                    'replies: ask for modalities ["image"], or serve on the V1 runner (the default)')


@dataclass(frozen=True, slots=True)
class Capabilities:
    model_runner: str  # vLLM's model runner in use: "v1" or "v2"
    guided_from_boi: bool  # the family's twins are the open image span alone (Lumina-mGPT)

    def guides(self, mode: int) -> bool:
        """Whether a reply of ``mode`` (``RequestOptions.mode``) can be guided: any that writes images, except
        span-only twins in interleaved replies on Model Runner V2, where a twin would restart at a BOI that
        only the device sees."""
        if mode == TEXT_ONLY:
            return False
        return self.model_runner == "v1" or not self.guided_from_boi or mode == IMAGE_ONLY
