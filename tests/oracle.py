"""The correctness oracle: transformers' own Chameleon on the same checkpoint, greedy.

Transformers masks image-code logits itself; BOI and EOI are suppressed here too,
as our span logits processor forbids them in text-only requests. Without a chat
template its processor appends the separator (chat mode), as our default chat
format does; with one, the rendered template goes through the processor as is.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from transformers import AutoTokenizer, ChameleonForConditionalGeneration, ChameleonProcessor
from transformers.models.chameleon.image_processing_pil_chameleon import ChameleonImageProcessorPil

from engine.shared.vocab import TokenLayout


class HFOracle:
    def __init__(self, model_dir: Path) -> None:
        self.layout = TokenLayout.from_checkpoint(model_dir)
        self.model = ChameleonForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        image_processor = ChameleonImageProcessorPil.from_pretrained(model_dir)
        self.processor = ChameleonProcessor(image_processor, tokenizer, image_seq_length=self.layout.image_seq_length)

    def chat_inputs(self, text: str, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """One user turn: ``text`` followed by the images, in the checkpoint's chat format."""
        tokenizer = self.processor.tokenizer
        if tokenizer.chat_template:
            parts = [{"type": "text", "text": text}] + [{"type": "image"}] * len(images)
            rendered = tokenizer.apply_chat_template([{"role": "user", "content": parts}], tokenize=False,
                                                     add_generation_prompt=True)
            inputs = self.processor(text=rendered, images=images or None, return_tensors="pt")
            # transformers 5.19 appends the separator even with return_for_text_completion=True: drop it,
            # the rendered template is the whole prompt.
            for key in ("input_ids", "attention_mask"):
                inputs[key] = inputs[key][:, :-1]
            return inputs
        prompt = text + "<image>" * len(images)
        return self.processor(text=prompt, images=images or None, return_tensors="pt")

    @torch.inference_mode()
    def prompt_ids(self, text: str, images: list[Image.Image]) -> list[int]:
        """The ids the model reads: placeholders replaced by transformers' own VQ codes."""
        inputs = self.chat_inputs(text, images)
        ids = inputs["input_ids"][0].clone()
        if images:
            codes = self.model.get_image_tokens(inputs["pixel_values"].float()).flatten()
            ids[ids == self.layout.image_placeholder] = codes.to(ids.dtype)
        return ids.tolist()

    @torch.inference_mode()
    def greedy(self, text: str, images: list[Image.Image], max_new_tokens: int) -> list[int]:
        inputs = self.chat_inputs(text, images)
        out = self.model.generate(
            **inputs, do_sample=False, max_new_tokens=max_new_tokens,
            suppress_tokens=[self.layout.boi, self.layout.eoi],
            eos_token_id=[self.model.config.eos_token_id, self.layout.sep],
        )
        return out[0, inputs["input_ids"].shape[1]:].tolist()
