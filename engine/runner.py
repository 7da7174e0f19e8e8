"""The serving engine: vLLM's AsyncLLM plus Chameleon's image tokenizer, in one object.

Images are VQ-encoded here, in the front-end process, and reach vLLM as plain
token ids (BOI + codes + EOI). Why not vLLM's multimodal path: in an
early-fusion model an image *is* tokens of the shared vocabulary, so there is
nothing to embed or merge; plain ids keep the plugin model a text decoder,
let prefix caching and ``return_token_ids`` see the real codes, and make the
prompt exactly what the model reads. Encoding runs off the event loop and is
batched across requests whose images arrive together.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from engine.images import ImagePreprocessor
from engine.vocab import TokenLayout
from engine.vqgan import VQModel, load_hf_vqmodel

logger = logging.getLogger(__name__)


class EncodeBatcher:
    """Gathers images from concurrent requests and encodes each gathered group in one batch.

    While a batch is being encoded in a worker thread, new images queue up and
    form the next batch: no waiting window, so a lone request pays no delay.
    """

    def __init__(self, encode: Callable[[list[Image.Image]], list[list[int]]], max_batch: int = 16) -> None:
        self._encode = encode
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[Image.Image, asyncio.Future[list[int]]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def encode(self, images: list[Image.Image]) -> list[list[int]]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in images]
        for image, future in zip(images, futures):
            self._queue.put_nowait((image, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        return list(await asyncio.gather(*futures))

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < self._max_batch:
                batch.append(self._queue.get_nowait())
            live = [(image, fut) for image, fut in batch if not fut.done()]
            if not live:
                continue
            try:
                spans = await asyncio.to_thread(self._encode, [image for image, _ in live])
            except Exception as exc:  # one bad batch fails its requests, not the batcher
                logger.exception("image encode failed")
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), span in zip(live, spans):
                if not fut.done():
                    fut.set_result(span)


@dataclass(frozen=True, slots=True)
class ImageTokenizer:
    """Pixels -> codebook indices -> prompt token spans, with the checkpoint's own settings."""

    layout: TokenLayout
    preprocess: ImagePreprocessor
    vqmodel: VQModel
    device: torch.device

    @classmethod
    def from_checkpoint(cls, model_dir: str | Path, device: torch.device) -> ImageTokenizer:
        return cls(
            layout=TokenLayout.from_checkpoint(model_dir),
            preprocess=ImagePreprocessor.from_checkpoint(model_dir),
            vqmodel=load_hf_vqmodel(model_dir, device=device),
            device=device,
        )

    def encode_spans(self, images: list[Image.Image]) -> list[list[int]]:
        """BOI + code ids + EOI for each image, one batched encoder forward."""
        pixels = self.preprocess(images).to(self.device)
        codes = self.vqmodel.encode(pixels).cpu()
        return [self.layout.image_span(c) for c in codes]


class ChameleonEngine:
    """AsyncLLM for token generation and the image tokenizer for prompts, started together."""

    def __init__(self, llm, image_tokenizer: ImageTokenizer, max_model_len: int, model_class: str) -> None:
        self.llm = llm
        self.model_class = model_class
        self.image_tokenizer = image_tokenizer
        self.layout = image_tokenizer.layout
        self.tokenizer = llm.get_tokenizer()
        self.max_model_len = max_model_len
        self._batcher = EncodeBatcher(image_tokenizer.encode_spans)

    @classmethod
    def start(cls, engine_args) -> ChameleonEngine:
        """Build AsyncLLM (our plugin model and span logits processor) and the image tokenizer."""
        from vllm import ModelRegistry
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        from engine.span_grammar import logits_processor_for_runner

        vllm_config = engine_args.create_engine_config(UsageContext.OPENAI_API_SERVER)
        model_config = vllm_config.model_config
        # The adapter must match the model runner that this config selects (V1 on CPU, V2 on GPU).
        model_config.logits_processors = [*(model_config.logits_processors or []),
                                          logits_processor_for_runner(vllm_config)]
        llm = AsyncLLM.from_vllm_config(vllm_config, usage_context=UsageContext.OPENAI_API_SERVER,
                                        disable_log_stats=engine_args.disable_log_stats)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        image_tokenizer = ImageTokenizer.from_checkpoint(vllm_config.model_config.model, device)
        model_cls, _ = ModelRegistry.resolve_model_cls(vllm_config.model_config.architectures, vllm_config.model_config)
        model_class = f"{model_cls.__module__}:{model_cls.__qualname__}"
        return cls(llm, image_tokenizer, vllm_config.model_config.max_model_len, model_class)

    async def encode_images(self, images: list[Image.Image]) -> list[list[int]]:
        return await self._batcher.encode(images) if images else []

    def generate(self, prompt_ids: list[int], params, request_id: str) -> AsyncIterator:
        from vllm.inputs import TokensPrompt

        return self.llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), params, request_id)

    @property
    def is_alive(self) -> bool:
        return not self.llm.errored

    def shutdown(self) -> None:
        self.llm.shutdown()
