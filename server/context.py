"""One request's context from admission to the last byte, in the shape of vLLM's ``ServeContext`` and sglang's
``RequestContext``: its id, creation time and model name, its log record, and its usage, accounted once by the
driver (``server/driver.py``) as deltas arrive. Routes read usage from here in their wire format and never count.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.shared.request_options import RequestOptions
from schemas.common import CompletionTokensDetails, UsageInfo
from schemas.images import ImagesUsage, InputTokensDetails
from schemas.responses import OutputTokensDetails, ResponseUsage
from server.prompt import Prompt

if TYPE_CHECKING:
    from vllm import SamplingParams


@dataclass(slots=True)
class RequestRecord:
    """What one request's log line says beyond the HTTP facts (``server/requestlog.py`` writes it); unset
    fields are left out of the line."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    images_in: int | None = None
    images_out: int | None = None

    def fields(self) -> dict[str, int]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(slots=True)
class Usage:
    """Tokens by kind and images in and out. Fields after ``images_out`` are extensions: every route's usage
    carries them as extra fields, streamed and whole."""

    prompt_tokens: int
    prompt_image_tokens: int
    completion_tokens: list[int]  # per choice
    completion_image_tokens: list[int]  # per choice: BOI to EOI, size prefixes and trailers included
    images_in: int
    images_out: int = 0

    def extensions(self) -> dict:
        core = {f.name for f in dataclasses.fields(Usage)}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in core}

    def _totals(self, choice: int | None) -> tuple[int, int]:
        """(completion tokens, of them image tokens): of one choice, or of all."""
        if choice is None:
            return sum(self.completion_tokens), sum(self.completion_image_tokens)
        return self.completion_tokens[choice], self.completion_image_tokens[choice]

    def chat(self, with_images: bool) -> UsageInfo:
        completion, images = self._totals(None)
        details = CompletionTokensDetails(image_tokens=images) if with_images else None
        return UsageInfo(prompt_tokens=self.prompt_tokens, completion_tokens=completion,
                         total_tokens=self.prompt_tokens + completion, completion_tokens_details=details,
                         **self.extensions())

    def completions(self) -> UsageInfo:
        return self.chat(with_images=False)

    def images(self, choice: int | None = None) -> ImagesUsage:
        """Of the whole request, or of one choice's image (a streamed image's ``completed`` event)."""
        output, _ = self._totals(choice)
        details = InputTokensDetails(text_tokens=self.prompt_tokens - self.prompt_image_tokens,
                                     image_tokens=self.prompt_image_tokens)
        return ImagesUsage(input_tokens=self.prompt_tokens, output_tokens=output,
                           total_tokens=self.prompt_tokens + output, input_tokens_details=details,
                           **self.extensions())

    def responses(self) -> ResponseUsage:
        output, images = self._totals(None)
        return ResponseUsage(input_tokens=self.prompt_tokens, output_tokens=output,
                             total_tokens=self.prompt_tokens + output,
                             output_tokens_details=OutputTokensDetails(image_tokens=images), **self.extensions())


@dataclass(slots=True)
class RequestContext:
    """A request admitted to the engine (``server/pipeline.py`` builds it): what the model reads, what it is
    asked and under which id, and what its route's wire mapping reads back."""

    request_id: str
    model: str  # the served model's name
    prompt: Prompt
    options: RequestOptions
    params: SamplingParams
    record: RequestRecord
    usage: Usage
    created: int = field(default_factory=lambda: int(time.time()))
