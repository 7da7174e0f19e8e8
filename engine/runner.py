"""The serving engine: vLLM's AsyncLLM plus Chameleon's image tokenizer, in one object.

Images are VQ-encoded here, in the front-end process, and reach vLLM as plain
token ids (BOI + codes + EOI). Why not vLLM's multimodal path: in an
early-fusion model an image *is* tokens of the shared vocabulary, so there is
nothing to embed or merge; plain ids keep the plugin model a text decoder,
let prefix caching and ``return_token_ids`` see the real codes, and make the
prompt exactly what the model reads. Encoding runs off the event loop and is
batched across requests whose images arrive together; so is decoding of the
images the model writes (VQGAN decoder + PNG).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from engine.batching import MicroBatcher
from engine.images import ImagePreprocessor, to_png
from engine.span_format import image_sizes, target_resolution
from engine.span_grammar import SpanParams
from engine.splitter import ImageCodes
from engine.vocab import CheckpointError, TokenLayout
from engine.vqgan import VQModel, encoder_mismatch, load_hf_vqmodel, load_meta_vqgan

logger = logging.getLogger(__name__)


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


@dataclass(frozen=True, slots=True)
class ImagePainter:
    """Codebook indices of generated images -> PNG bytes, one batched decoder forward."""

    vqmodel: VQModel
    device: torch.device

    @classmethod
    def load(cls, vqgan: Path | None, encoder: VQModel, device: torch.device) -> ImagePainter | None:
        """The decoder in ``vqgan`` (Meta's vqgan.ckpt, checked against the model by ``engine.checkpoint``);
        None disables image output."""
        if vqgan is None:
            logger.warning("no VQGAN decoder: image output is disabled; pass --vqgan PATH/vqgan.ckpt")
            return None
        vqmodel = load_meta_vqgan(vqgan, device=device)
        if mismatch := encoder_mismatch(vqmodel, encoder):
            logger.warning("%s: encoder weights differ from the model's model.vqmodel.* (%s, ...)",
                           vqgan, ", ".join(mismatch[:3]))
        return cls(vqmodel=vqmodel, device=device)

    def paint(self, images: list[ImageCodes]) -> list[bytes]:
        """Whole images, or previews: whole rows known so far, drawn with the rest of the picture mid-grey.

        A preview's missing rows repeat its last row before decoding, so the convolutions near the
        edge see plausible codes, then their pixels are set to grey: the picture fills in top-down.
        Images of one grid decode as one batch (Lumina-mGPT's grids differ per request).
        """
        out: list[bytes] = [b""] * len(images)
        for grid in dict.fromkeys(im.grid for im in images):
            index = [i for i, im in enumerate(images) if im.grid == grid]
            for i, png in zip(index, self._paint_grid([images[i].codes for i in index], grid), strict=True):
                out[i] = png
        return out

    def _paint_grid(self, images: list[list[int]], grid: tuple[int, int]) -> list[bytes]:
        height, width = grid
        full = [codes + codes[-width:] * (height - len(codes) // width) for codes in images]
        codes = torch.tensor(full, dtype=torch.long, device=self.device).view(len(images), height, width)
        pixels = self.vqmodel.decode(codes).cpu()  # b, 3, height*f, width*f in [-1, 1]
        scale = pixels.shape[-2] // height
        return [to_png(_grey_below(picture, len(known) // width * scale)) for picture, known in zip(pixels, images)]


def _grey_below(picture: torch.Tensor, top: int) -> torch.Tensor:
    """[3, H, W] in [-1, 1] with rows from ``top`` on mid-grey (0.0); unchanged when ``top`` >= H."""
    if top >= picture.shape[-2]:
        return picture
    return torch.cat((picture[:, :top], torch.zeros_like(picture[:, top:])), dim=1)


class ChameleonEngine:
    """AsyncLLM for token generation and the image tokenizer for prompts, started together."""

    def __init__(self, llm, image_tokenizer: ImageTokenizer, painter: ImagePainter | None, max_model_len: int,
                 max_num_seqs: int, model_class: str, kv_bytes_per_token: int, model_dir: str = "",
                 can_guide: bool = True) -> None:
        self.llm = llm
        self.kv_bytes_per_token = kv_bytes_per_token  # all layers, keys and values, all TP ranks together
        self.max_num_seqs = max_num_seqs
        self.can_guide = can_guide  # classifier-free guidance runs on the V1 model runner only (engine/guidance.py)
        self.model_class = model_class
        self.layout = image_tokenizer.layout
        self.tokenizer = llm.get_tokenizer()
        self.max_model_len = max_model_len
        self._encoder = MicroBatcher(image_tokenizer.encode_spans)
        self._painter = MicroBatcher(painter.paint) if painter else None
        vq = image_tokenizer.vqmodel.config
        # "WxH" -> (rows, codes per row) of the images this checkpoint writes, the default first; {} without a decoder
        self.image_sizes = image_sizes(self.layout.span, vq.resolution // vq.grid,
                                       target_resolution(model_dir, vq.resolution)) if painter else {}

    @classmethod
    def start(cls, engine_args, vqgan: Path | None = None) -> ChameleonEngine:
        """Build AsyncLLM (our plugin model and span logits processor), the image tokenizer and the painter
        of ``vqgan`` (as ``engine.checkpoint.preflight`` found it; None: no image output)."""
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
        image_tokenizer = ImageTokenizer.from_checkpoint(model_config.model, device)
        painter = ImagePainter.load(vqgan, image_tokenizer.vqmodel, device)
        model_cls, _ = ModelRegistry.resolve_model_cls(model_config.architectures, model_config)
        model_class = f"{model_cls.__module__}:{model_cls.__qualname__}"
        hf = model_config.hf_config
        kv_bytes = 2 * hf.num_hidden_layers * hf.num_key_value_heads * (hf.hidden_size // hf.num_attention_heads) \
            * model_config.dtype.itemsize
        return cls(llm, image_tokenizer, painter, model_config.max_model_len,
                   vllm_config.scheduler_config.max_num_seqs, model_class, kv_bytes, model_config.model,
                   not vllm_config.use_v2_model_runner)

    async def encode_images(self, images: list[Image.Image]) -> list[list[int]]:
        return await self._encoder.submit(images)

    @property
    def can_paint(self) -> bool:
        """Whether image output is possible: a VQGAN decoder was found."""
        return bool(self.image_sizes)

    @property
    def image_grid(self) -> tuple[int, int] | None:
        """(rows, codes per row) of an image written without an asked size."""
        return next(iter(self.image_sizes.values()), None)

    async def paint_images(self, images: list[ImageCodes]) -> list[bytes]:
        """PNG bytes for each generated image."""
        if self._painter is None:
            raise CheckpointError("no VQGAN decoder loaded")
        return await self._painter.submit(images)

    async def paint_preview(self, codes: list[int], grid: tuple[int, int]) -> bytes:
        """A PNG of an unfinished ``grid`` image from its whole rows (at least one) so far; the rest mid-grey."""
        if self._painter is None:
            raise CheckpointError("no VQGAN decoder loaded")
        width = grid[1]
        if len(codes) < width:
            raise ValueError(f"a preview needs a whole row of {width} codes, got {len(codes)}")
        [png] = await self._painter.submit([ImageCodes(codes[:len(codes) // width * width], grid)])
        return png

    def generate(self, prompt_ids: list[int], params, request_id: str) -> AsyncIterator:
        from vllm.inputs import TokensPrompt

        return self.llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), params, request_id)

    def guidance_kv_bytes(self, params) -> int:
        """Memory the unconditional twins of a request take outside vLLM's KV budget (engine/guidance.py)."""
        span = SpanParams.from_extra_args(params.extra_args)
        if not span.guided:
            return 0
        return params.n * (len(span.uncond_prompt) + params.max_tokens) * self.kv_bytes_per_token

    @property
    def is_alive(self) -> bool:
        return not self.llm.errored

    def shutdown(self) -> None:
        self.llm.shutdown()
