"""Emu3's image tokenizer in the front end: transformers' ``Emu3VQVAE`` and ``Emu3ImageProcessor``, used as
they are and wrapped so that the server's batching works on them.

- Encoding: each image is preprocessed as the processor does (aspect kept, ``smart_resize`` onto multiples of
  8 px), and images of one size go through ``Emu3VQVAE.encode`` in batches of bounded pixels. transformers
  pads a batch of mixed sizes to the largest and the encoder then sees the padding; grouping by size gives
  every image the codes it gets on its own.
- Decoding: ``Emu3VQVAE.decode`` on a batch of one grid (a still image is its first frame, as transformers
  returns it), then the processor's un-normalisation into the [-1, 1] pixels the painter writes as PNG.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.frontend.images import ImageInputError, cells_under, transparent_area
from engine.frontend.vqgan import images_per_pass, read_hf_vq_state
from engine.shared.families.emu3 import MAX_SIDE, VQ_PREFIXES, image_processor
from engine.shared.vocab import CheckpointError, TokenLayout


class Emu3VQ:
    """Encode and decode of one checkpoint's VQ model; pixels out are in [-1, 1]."""

    def __init__(self, vqmodel, processor, device: torch.device) -> None:
        self.vqmodel, self.processor, self.device = vqmodel, processor, device
        self.pixels_per_code = int(vqmodel.spatial_scale_factor)
        mean = torch.tensor(processor.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(processor.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        self._unit = (mean, std)  # the processor's normalisation, undone on the way out

    @classmethod
    def load(cls, model_dir: str | Path, device: torch.device) -> Emu3VQ:
        from transformers import Emu3VQVAE, Emu3VQVAEConfig

        model_dir = Path(model_dir)
        config = json.loads((model_dir / "config.json").read_text())
        vqmodel = Emu3VQVAE(Emu3VQVAEConfig(**config["vq_config"]))
        state, source = read_hf_vq_state(model_dir, VQ_PREFIXES)
        missing, unexpected = vqmodel.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{source}: Emu3 VQ weights do not match vq_config: missing {missing[:8]}, "
                                  f"unexpected {unexpected[:8]}")
        return cls(vqmodel.to(device).eval(), image_processor(model_dir), device)

    @torch.inference_mode()
    def encode_images(self, images: list[Image.Image]) -> list[torch.Tensor]:
        """One [rows, cols] code grid per image, in order; images of one size share encoder passes."""
        pixels = [torch.from_numpy(np.asarray(self.processor(img, return_tensors="np")["pixel_values"][0]))
                  for img in images]
        out: list[torch.Tensor] = [torch.empty(0)] * len(images)
        for shape in dict.fromkeys(p.shape for p in pixels):
            same = [i for i, p in enumerate(pixels) if p.shape == shape]
            per_pass = images_per_pass(shape[-2], shape[-1])  # activations bounded as Meta's VQGAN's are
            for start in range(0, len(same), per_pass):
                index = same[start:start + per_pass]
                batch = torch.stack([pixels[i] for i in index]).to(self.device)
                sizes = torch.tensor([shape[-2:]] * len(index))
                for i, codes in zip(index, self.vqmodel.encode(batch, sizes, return_dict=True).image_tokens,
                                    strict=True):
                    out[i] = codes.cpu()
        return out

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """[B, rows, cols] codes -> float32 [B, 3, rows * f, cols * f] pixels in [-1, 1]."""
        pixels = self.vqmodel.decode(codes.to(self.device, torch.long)).float().cpu()
        mean, std = self._unit
        return (2 * (pixels * std + mean) - 1).clamp(-1.0, 1.0)


@dataclass(frozen=True, slots=True)
class Emu3ImageTokenizer:
    """Pixels -> codes -> prompt spans of an Emu3 checkpoint (the counterpart of ``client.ImageTokenizer``)."""

    layout: TokenLayout
    vq: Emu3VQ

    @property
    def pixels_per_code(self) -> int:
        return self.vq.pixels_per_code

    def editable_cells(self, mask: Image.Image) -> np.ndarray:
        """An edit's mask (the size of its image) as the [rows, cols] cells of that image's codes that the
        reply may change: the grid the processor resizes the image to (``smart_resize``), the mask resized as
        the image is."""
        from transformers.models.emu3.image_processing_emu3 import smart_resize

        processor, f = self.vq.processor, self.pixels_per_code
        height, width = mask.height, mask.width
        if processor.do_resize:
            try:
                height, width = smart_resize(height, width, processor.spatial_factor, processor.min_pixels,
                                             processor.max_pixels)
            except ValueError as e:
                raise ImageInputError(f"the image cannot be read: {e}") from None
        rows, cols = height // f, width // f
        if height % f or width % f or not 1 <= max(rows, cols) <= MAX_SIDE:
            raise ImageInputError(f"the image is read as {width}x{height} pixels, which is no grid of "
                                  f"{MAX_SIDE} codes a side at most of {f} px each: an edit writes its image's grid")
        area = transparent_area(mask).resize((width, height), resample=Image.Resampling.BILINEAR)
        return cells_under(np.array(area), rows, cols)

    def encode_spans(self, images: list[Image.Image]) -> list[list[int]]:
        return [self.layout.image_span(c) for c in self.vq.encode_images(images)]
