"""Emu3 (BAAI), served from the Hugging Face ``-hf`` layout that transformers loads as
``Emu3ForConditionalGeneration`` (``BAAI/Emu3-Gen-hf``, ``BAAI/Emu3-Chat-hf``).

Facts from transformers 5.19 ``models/emu3/`` (and its ``convert_emu3_weights_to_hf.py``) and BAAI's
repository (github.com/baaivision/Emu3) ``image_generation.py``:

- ``config.json`` nests ``text_config`` (a Llama: no q/k norms) and ``vq_config`` (``Emu3VQVAE``, whose weights
  are ``vqmodel.*`` in the same files); the text model's are ``text_model.model.*`` and ``text_model.lm_head.*``
  (the names BAAI's conversion wrote, which transformers 5 maps on load and still writes).
- Codebook index i is the token ``<|visual token {i:06d}|>``.
- Image span (``processing_emu3.py``, ``Emu3ImageVocabularyMapping``): ``<|image start|>``, the grid as text
  ``H*W`` (as the checkpoint's tokenizer writes it: the converted one merges digits), ``<|image token|>``, H
  rows of W codes each closed by ``<|extra_200|>``, then ``<|extra_201|>`` (end of frame) and
  ``<|image end|>``; the reply then ends with the end-of-sequence token ``<|extra_204|>``.
- The VQ model downsamples by 2 ** (len(channel_multiplier) - 1) = 8 per side. Input images keep their
  aspect ratio (``smart_resize`` into ``min_pixels``..``max_pixels``); images to write are asked by ratio at an
  area (``Emu3Processor.calculate_generate_size``; the authors' default area is 720 x 720).
- Generation as the authors run it: top-k 2048, classifier-free guidance 3.0 from their negative prompt, and a
  positive suffix appended to the prompt.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from engine.shared.families.base import CHAMELEON_MODEL_CLASS, Family, SamplingDefaults
from engine.shared.image_sizes import RoundedSizes
from engine.shared.processor_settings import image_processor_settings
from engine.shared.span_format import SizeText, SpanFormat

if TYPE_CHECKING:
    from transformers import Emu3ImageProcessor

EMU3_ARCHITECTURE = "Emu3ForConditionalGeneration"
VQ_PREFIXES = ("vqmodel.", "model.vqmodel.")  # the VQ model's weights: published, and transformers' own names
EOL_NAME, EOF_NAME, OPENING_NAME = "<|extra_200|>", "<|extra_201|>", "<|image token|>"
DEFAULT_AREA = 720 * 720  # the authors' image_area
MAX_SIDE = 512  # codes per side an image may have (4,096 px)
RATIOS = ("1:1", "4:3", "3:4", "16:9", "9:16")  # the sizes offered to pick from, each at the default area
# baaivision/Emu3 image_generation.py
POSITIVE_PROMPT = " masterpiece, film grained, best quality."
NEGATIVE_PROMPT = ("lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, "
                   "cropped, worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, "
                   "username, blurry.")


def generate_grid(ratio: str, area: int, spatial_factor: int) -> tuple[int, int]:
    """(rows, cols) of codes for an image of ``ratio`` (``"W:H"``) at about ``area`` pixels, rounded as
    ``Emu3Processor.calculate_generate_size`` rounds."""
    width, height = map(int, ratio.split(":"))
    scale = (area / (width * height)) ** 0.5
    return round(height * scale / spatial_factor), round(width * scale / spatial_factor)


class Emu3(Family):
    name = "emu3"
    title = "Emu3"
    architectures = (EMU3_ARCHITECTURE,)
    model_class = CHAMELEON_MODEL_CLASS  # Chameleon's decoder without q/k norms is Emu3's Llama
    qk_norm = False
    codec = "emu3"
    plain_image_prompt = True  # their image_generation.py: BOS + prompt + the image prefix, no chat template
    sampling = SamplingDefaults(image_temperature=1.0, image_top_k=2048, image_top_p=1.0, cfg_scale=3.0,
                                negative_prompt=NEGATIVE_PROMPT, image_prompt_suffix=POSITIVE_PROMPT)
    span_names = MappingProxyType({"boi": "<|image start|>", "eoi": "<|image end|>", "image_placeholder": "<image>",
                                   "sep": "<|extra_204|>"})

    def code_name(self, index: int) -> str:
        return f"<|visual token {index:06d}|>"

    def image_codes(self, vocabulary_map: dict[str, int]) -> dict[int, int]:
        prefix, suffix = "<|visual token ", "|>"
        return {int(name[len(prefix):-len(suffix)]): tid for name, tid in vocabulary_map.items()
                if name.startswith(prefix) and name.endswith(suffix) and name[len(prefix):-len(suffix)].isdigit()}

    def vocab_size(self, config: dict) -> int:
        if not config.get("text_config"):
            raise ValueError("no text_config: an Emu3 checkpoint nests its text model's config")
        return int(config["text_config"]["vocab_size"])

    def native_seq_length(self, config: dict, model_dir: Path) -> int:
        """The square grid at the authors' area, kept within the pixels the checkpoint's image processor
        accepts (a small test checkpoint writes small images)."""
        rows, cols = generate_grid("1:1", default_area(image_processor(model_dir)), spatial_factor(config))
        return rows * cols

    def span_format(self, vocabulary_map: dict[str, int], native_grid: int,
                    model_dir: Path | None = None) -> SpanFormat:
        """The grid in the prefix as the checkpoint's tokenizer (loaded by transformers) writes ``H*W``: BAAI's
        converted tokenizer pre-tokenizes digits as GPT-2 does and merges them; one token per digit without a
        ``model_dir``."""
        needed = [EOL_NAME, EOF_NAME, OPENING_NAME, "*", *"0123456789"]
        if missing := [n for n in needed if n not in vocabulary_map]:
            raise ValueError(f"an Emu3 vocabulary_map needs {missing}")
        texts = [str(n) for n in range(MAX_SIDE + 1)]
        if model_dir is None:
            numbers = tuple(tuple(vocabulary_map[d] for d in text) for text in texts)
        else:
            from transformers import AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
            except (OSError, ValueError) as e:
                raise ValueError(f"{model_dir}: its tokenizer cannot be loaded ({e})") from None
            numbers = tuple(map(tuple, tokenizer(texts, add_special_tokens=False)["input_ids"]))
        size = SizeText(numbers, vocabulary_map["*"], vocabulary_map[OPENING_NAME])
        return SpanFormat(native_grid, vocabulary_map[EOL_NAME], size, trailer=(vocabulary_map[EOF_NAME],))

    def image_sizes(self, span: SpanFormat, pixels_per_code: int, model_dir: str) -> RoundedSizes:
        """Any size the authors' processor writes, within its image processor's pixels; the square at their
        area by default, and :data:`RATIOS` at that area to pick from."""
        processor = image_processor(Path(model_dir))
        area = default_area(processor)
        return RoundedSizes(pixels_per_code, processor.min_pixels, processor.max_pixels, MAX_SIDE,
                            generate_grid("1:1", area, pixels_per_code),
                            MappingProxyType({r: generate_grid(r, area, pixels_per_code) for r in RATIOS}))

    def weight_name(self, name: str) -> str | None:
        """Published names (``text_model.model.*``, ``text_model.lm_head.*``, ``vqmodel.*``) and transformers'
        own (``model.text_model.*``, ``lm_head.*``, ``model.vqmodel.*``)."""
        if name.startswith(VQ_PREFIXES):
            return None
        for theirs, ours in (("text_model.model.", "model."), ("text_model.lm_head.", "lm_head."),
                             ("model.text_model.", "model.")):
            if name.startswith(theirs):
                return ours + name[len(theirs):]
        return name


def spatial_factor(config: dict) -> int:
    """Pixels per code along each side: the VQ model's downsampling."""
    return 2 ** (len(config["vq_config"].get("channel_multiplier", [1, 2, 2, 4])) - 1)


def image_processor(model_dir: Path) -> Emu3ImageProcessor:
    """The checkpoint's ``Emu3ImageProcessor`` from its saved settings in either layout; transformers' defaults
    where it saved none (the preflight refuses such a folder)."""
    from transformers import Emu3ImageProcessor

    settings = image_processor_settings(model_dir)
    return Emu3ImageProcessor() if settings is None else Emu3ImageProcessor.from_dict(settings)


def default_area(processor: Emu3ImageProcessor) -> int:
    """The authors' area, within the image processor's ``min_pixels``..``max_pixels``."""
    return int(min(max(DEFAULT_AREA, processor.min_pixels), processor.max_pixels))


EMU3 = Emu3()
