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

import copy
import logging
import os
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from engine.frontend.batching import MicroBatcher
from engine.frontend.emu3_vq import Emu3ImageTokenizer, Emu3VQ
from engine.frontend.image_steps import ImageStepObserver, count_image_steps
from engine.frontend.images import ImagePreprocessor, to_png
from engine.frontend.splitter import ImageCodes
from engine.frontend.vqgan import (
    MAX_PIXELS_PER_PASS,
    VQModel,
    encoder_mismatch,
    images_per_pass,
    load_hf_vqmodel,
    load_meta_vqgan,
)
from engine.shared.companions import SCHEDULER
from engine.shared.families import CHAMELEON, Family
from engine.shared.processor_settings import processor_settings
from engine.shared.vocab import CheckpointError, TokenLayout

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ImageTokenizer:
    """Pixels -> codebook indices -> prompt token spans, with the checkpoint's own settings."""

    layout: TokenLayout
    preprocess: ImagePreprocessor
    vqmodel: VQModel
    device: torch.device
    max_encode_pixels: int = MAX_PIXELS_PER_PASS

    @classmethod
    def from_checkpoint(cls, model_dir: str | Path, device: torch.device, family: Family = CHAMELEON) -> ImageTokenizer:
        return cls(
            layout=TokenLayout.from_checkpoint(model_dir),
            preprocess=ImagePreprocessor.from_checkpoint(model_dir, family),
            vqmodel=load_hf_vqmodel(model_dir, device=device),
            device=device,
        )

    @property
    def pixels_per_code(self) -> int:
        return self.vqmodel.pixels_per_code

    def editable_cells(self, mask: Image.Image) -> np.ndarray:
        """An edit's mask (the size of its image) as the [rows, cols] cells of that image's codes that the
        reply may change: the native square."""
        return self.preprocess.editable_cells(mask, self.layout.span.native_grid)

    def encode_spans(self, images: list[Image.Image]) -> list[list[int]]:
        """BOI + code ids + EOI for each image, in batched encoder passes of bounded pixels."""
        pixels = self.preprocess(images)
        per_pass = images_per_pass(pixels.shape[-2], pixels.shape[-1], self.max_encode_pixels)
        codes = torch.cat([self.vqmodel.encode(part.to(self.device)).cpu() for part in pixels.split(per_pass)])
        return [self.layout.image_span(c) for c in codes]


@dataclass(frozen=True, slots=True)
class ImagePainter:
    """Codebook indices of generated images -> PNG bytes: decoder passes of bounded pixels, PNGs on threads.
    ``vqmodel``: Meta's VQGAN (``VQModel``) or Emu3's (``Emu3VQ``): ``decode`` to [-1, 1], ``pixels_per_code``."""

    vqmodel: VQModel | Emu3VQ
    device: torch.device
    max_decode_pixels: int = MAX_PIXELS_PER_PASS
    # PNG encoding can cost more than the image's decode on a GPU; Pillow's zlib work runs outside the GIL, so
    # encoders in threads scale with cores (bench/RESULTS.md, "Figures kept out of the code").
    png_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(min(8, os.cpu_count() or 1), thread_name_prefix="png"))

    @classmethod
    def load(cls, vqgan: Path | None, encoder: VQModel, device: torch.device) -> ImagePainter | None:
        """The decoder in ``vqgan`` (Meta's vqgan.ckpt, checked against the model by ``engine.offline.preflight``);
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
        scale = self.vqmodel.pixels_per_code
        per_slice = images_per_pass(height * scale, width * scale, self.max_decode_pixels)
        pngs = []  # each slice's PNGs encode while the next slice decodes
        for start, part in zip(range(0, len(images), per_slice), codes.split(per_slice)):
            pixels = self.vqmodel.decode(part).cpu()  # b, 3, H, W in [-1, 1]
            known_rows = [len(known) // width * scale for known in images[start:start + per_slice]]
            pngs += [self.png_pool.submit(_png_with_grey_below, picture, top)
                     for picture, top in zip(pixels, known_rows)]
        return [png.result() for png in pngs]


def processor_chat_template(model_dir: str | Path) -> str | None:
    """The chat template a processor saves beside the tokenizer, as transformers finds it (``chat_template.jinja``
    or, as older transformers wrote it, ``chat_template.json``); None where there is none."""
    return processor_settings(model_dir).get("chat_template")


def _image_codec(model_dir: str, family: Family, decoder: Path | None,
                 device: torch.device) -> tuple[ImageTokenizer | Emu3ImageTokenizer, ImagePainter | None]:
    """The image tokenizer and painter of a ``family`` checkpoint; ``decoder`` as the preflight found it (None:
    no image output). Emu3's VQ model, decoder included, is in the checkpoint's weights."""
    if family.codec == "emu3":
        vq = Emu3VQ.load(model_dir, device)
        painter = ImagePainter(vqmodel=vq, device=device) if decoder is not None else None
        return Emu3ImageTokenizer(TokenLayout.from_checkpoint(model_dir), vq), painter
    image_tokenizer = ImageTokenizer.from_checkpoint(model_dir, device, family)
    return image_tokenizer, ImagePainter.load(decoder, image_tokenizer.vqmodel, device)


def _png_with_grey_below(picture: torch.Tensor, top: int) -> bytes:
    """PNG of [3, H, W] in [-1, 1] with rows from ``top`` on mid-grey (0.0); unchanged when ``top`` >= H."""
    if top < picture.shape[-2]:
        picture = torch.cat((picture[:, :top], torch.zeros_like(picture[:, top:])), dim=1)
    return to_png(picture)


def codes_as_special(tokenizer, layout: TokenLayout):
    """A copy of the tokenizer for vLLM's output detokenizer, in which image codes (and Lumina-mGPT's size
    and end-of-line tokens) are special tokens.

    Codes are vocabulary entries that render as text (``IMGIMG...Z``), so vLLM would match stop strings
    inside images ("Z" ends a reply at its first code) and detokenize 1,024 tokens per image for nothing.
    As special tokens they are skipped (``skip_special_tokens``, on by default), like BOI and EOI already
    are. Only the output side gets the copy: prompts keep the checkpoint's own tokenization, so text
    that spells a code's name stays text. Version-pinned: vLLM 0.32's OutputProcessor reads
    ``.tokenizer`` per request, and its fast detokenizer reads ``._tokenizer`` (a ``tokenizers.Tokenizer``).
    """
    import tokenizers

    rust = tokenizers.Tokenizer.from_str(tokenizer._tokenizer.to_str())
    names = tokenizer.convert_ids_to_tokens([*sorted(layout.code_of), *layout.span.inner_ids()])
    rust.add_special_tokens([tokenizers.AddedToken(name, special=True, normalized=False) for name in names])
    output_side = copy.copy(tokenizer)
    output_side._tokenizer = rust
    return output_side


@contextmanager
def _engine_core_threads_bound(vllm_config) -> Iterator[None]:
    """While the EngineCore process starts (it reads the environment then): the OpenMP binding that vLLM gives
    its CPU worker process, for an EngineCore that runs the model itself (``server.cli.model_in_engine_core``).

    vLLM binds only worker processes; unbound, the EngineCore's OpenMP team takes every core, and its second
    thread spins on the core the front end needs. Bound, it keeps vLLM's layout: the model's threads on their
    own cores, one core left to the front end.
    """
    from vllm.platforms import current_platform

    if not current_platform.is_cpu() or vllm_config.parallel_config.distributed_executor_backend != "uni":
        yield
        return
    from vllm.utils.ompmultiprocessing import OMPProcessManager

    with OMPProcessManager(vllm_config).configure_omp_envs(rank=0, local_rank=0):
        yield


def logits_processor_for_runner(vllm_config: Any = None) -> type:
    """The adapter class for the runner vLLM will use: V2 needs Triton; VLLM_USE_V2_MODEL_RUNNER overrides.

    With ``vllm_config`` the answer is vLLM's own (``use_v2_model_runner``, which also falls back to V1
    for features V2 lacks); without it, the env override, else Triton's presence, as vLLM decides by default.
    """
    if vllm_config is not None:
        use_v2 = vllm_config.use_v2_model_runner
    else:
        from vllm import envs
        from vllm.triton_utils import HAS_TRITON

        use_v2 = envs.VLLM_USE_V2_MODEL_RUNNER if envs.VLLM_USE_V2_MODEL_RUNNER is not None else HAS_TRITON
    if use_v2:
        from engine.worker.runner_v2 import ChameleonSpanLogitsProcessorV2

        return ChameleonSpanLogitsProcessorV2
    from engine.worker.runner_v1 import ChameleonSpanLogitsProcessorV1

    return ChameleonSpanLogitsProcessorV1


class ChameleonEngine:
    """AsyncLLM for token generation and the image tokenizer for prompts, started together."""

    def __init__(self, llm, image_tokenizer: ImageTokenizer | Emu3ImageTokenizer, painter: ImagePainter | None,
                 max_model_len: int, max_num_seqs: int, model_class: str, model_dir: str = "",
                 model_runner: str = "v1", family: Family = CHAMELEON, guides: bool = True) -> None:
        self.llm = llm
        self.guides = guides  # whether vLLM schedules with guidance companions (engine/plugin.py chooses)
        self.model_runner = model_runner  # vLLM's model runner in use, "v1" or "v2" (VLLM_USE_V2_MODEL_RUNNER)
        self.max_num_seqs = max_num_seqs
        self.model_class = model_class
        self.layout = image_tokenizer.layout
        self.editable_cells = image_tokenizer.editable_cells  # an edit's mask -> the cells of its image's codes
        self.tokenizer = llm.get_tokenizer()
        # the tokenizer's chat template, else the processor's saved beside it (Emu3's -hf folders keep it there)
        self.chat_template = getattr(self.tokenizer, "chat_template", None) or \
            (processor_chat_template(model_dir) if model_dir else None)
        self.max_model_len = max_model_len
        self._encoder = MicroBatcher(image_tokenizer.encode_spans)
        self._painter = MicroBatcher(painter.paint) if painter else None
        self.pixels_per_code = image_tokenizer.pixels_per_code
        # the sizes this checkpoint writes; None without a decoder
        self.image_sizes = family.image_sizes(self.layout.span, self.pixels_per_code, model_dir) if painter else None

    @classmethod
    def start(cls, engine_args, family: Family, vqgan: Path | None = None,
              image_steps: ImageStepObserver | None = None) -> ChameleonEngine:
        """Build AsyncLLM (our plugin model and span logits processor), the image tokenizer of a ``family``
        checkpoint and the painter of ``vqgan`` (as ``engine.offline.preflight.preflight`` found it; None: no
        image output). Guided requests' unconditional companions are vLLM requests of their own, scheduled by
        ours (``engine/core/guided_pairs.py``, chosen by ``engine/plugin.py``), their KV in vLLM's paged cache.
        ``image_steps`` gets the engine steps each written image takes (``engine/frontend/image_steps.py``)."""
        from vllm import ModelRegistry
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        from engine.frontend.detokenize import skip_spans_when_detokenizing

        vllm_config = engine_args.create_engine_config(UsageContext.OPENAI_API_SERVER)
        model_config = vllm_config.model_config
        # The adapter must match the model runner that this config selects (V1 on CPU, V2 on GPU).
        model_config.logits_processors = [*(model_config.logits_processors or []),
                                          logits_processor_for_runner(vllm_config)]
        with _engine_core_threads_bound(vllm_config):
            llm = AsyncLLM.from_vllm_config(vllm_config, usage_context=UsageContext.OPENAI_API_SERVER,
                                            disable_log_stats=engine_args.disable_log_stats)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        image_tokenizer, painter = _image_codec(model_config.model, family, vqgan, device)
        # vLLM refuses logit_bias and min_p under speculative decoding, whose drafts would skip them. SJD drafts
        # image rows only, whose codes the span processor decides, and text rows keep vLLM's built-in processors
        # (engine/worker/jacobi_v1.py): the requests' checks need not know of the drafts.
        llm.input_processor.speculative_config = None
        llm.output_processor.tokenizer = codes_as_special(llm.get_tokenizer(), image_tokenizer.layout)
        skip_spans_when_detokenizing(llm.output_processor, image_tokenizer.layout)
        if image_steps is not None:
            count_image_steps(llm.output_processor, image_tokenizer.layout, image_steps)
        model_cls, _ = ModelRegistry.resolve_model_cls(model_config.architectures, model_config)
        model_class = f"{model_cls.__module__}:{model_cls.__qualname__}"
        return cls(llm, image_tokenizer, painter, model_config.max_model_len,
                   vllm_config.scheduler_config.max_num_seqs, model_class, model_config.model,
                   "v2" if vllm_config.use_v2_model_runner else "v1", family,
                   guides=vllm_config.scheduler_config.scheduler_cls == SCHEDULER)

    async def encode_images(self, images: list[Image.Image]) -> list[list[int]]:
        return await self._encoder.submit(images)

    @property
    def can_paint(self) -> bool:
        """Whether image output is possible: a VQGAN decoder was found."""
        return self.image_sizes is not None

    @property
    def image_grid(self) -> tuple[int, int] | None:
        """(rows, codes per row) of an image written without an asked size."""
        return self.image_sizes.default if self.image_sizes is not None else None

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
        """vLLM's stream of outputs for ``prompt_ids``, handed over as rendered input: a raw prompt would go
        through vLLM's renderer on a thread of its executor, for ids the front end has already built."""
        from vllm.inputs import tokens_input

        return self.llm.generate(tokens_input(prompt_ids), params, request_id)

    @property
    def is_alive(self) -> bool:
        return not self.llm.errored

    def shutdown(self) -> None:
        self.llm.shutdown()
