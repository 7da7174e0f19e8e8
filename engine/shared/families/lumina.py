"""Lumina-mGPT (Alpha-VLLM), facts from Alpha-VLLM/Lumina-mGPT@104abe4.

- Architecture ``ChameleonXLLMXForConditionalGeneration``: Chameleon's model plus training hooks (same weights,
  same names: ``lumina_mgpt/model/modeling_xllmx_chameleon.py``), so our Chameleon model serves it.
- Image spans (``lumina_mgpt/data/item_processor.py``, FlexARItemProcessor): BOI, a height token and a width
  token ``<reserved{8800 + n:05d}>`` with n in patches of 32 px (two VQGAN codes), then the rows, each its
  codes followed by the end-of-line token ``<reserved08799>``, then EOI. The grids it was trained on are
  ``generate_crop_size_list((target // 32) ** 2, 32)``: every (w, h) in patches with w * h <= N and aspect
  <= 4, reached by walking w down from N while raising h as far as the area allows. Checkpoints are named by
  their target size (``Lumina-mGPT-7B-768``).
- Sampling (``inference_solver.py``): ``create_logits_processor(cfg=3.0, image_top_k=2000, text_top_k=10)``
  with the one ``temperature`` 1.0 of its README examples (which raise cfg to 4.0) and no top-p. Guidance
  is from the image alone: the unconditional sequence is the open span from its BOI (``engine/worker/guidance.py``).
- Published folders: weights in safetensors shards with an index, their config fields, tokenizer files and
  no image-processor config (their item processor crops and normalizes images, and feeds the crop to
  Meta's image tokenizer). Their q/k norms hold one row per model-parallel rank (``model_parallel_size``, 1
  in their releases), repeated over that rank's heads at run time (``ChameleonLayerNorm.repeat_param`` in
  ``lumina_mgpt/model/chameleon/modeling_chameleon.py``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from engine.shared.families.base import Family, SamplingDefaults
from engine.shared.image_sizes import ListedSizes, size_name
from engine.shared.span_format import SizeTokens, SpanFormat

if TYPE_CHECKING:
    import torch

LUMINA_ARCHITECTURE = "ChameleonXLLMXForConditionalGeneration"
EOL_NAME = "<reserved08799>"
CODES_PER_PATCH = 2  # a size token counts patches of two codes (32 px at Chameleon's 16 px per code)
_MAX_ASPECT = 4.0


def size_token_name(patches: int) -> str:
    """Lumina's name of the height/width token for ``patches`` patches."""
    return f"<reserved{8800 + patches:05d}>"


def lumina_grids(target_patches: int, max_patches: int) -> list[tuple[int, int]]:
    """Lumina's trained (rows, cols) code grids for a square of ``target_patches`` patches a side, as its
    crop-size list walks them, limited to sides of at most ``max_patches``."""
    area, found = target_patches**2, []
    w, h = area, 1
    while w > 0:
        if max(w, h) / min(w, h) <= _MAX_ASPECT and max(w, h) <= max_patches:
            found.append((h * CODES_PER_PATCH, w * CODES_PER_PATCH))
        if (h + 1) * w <= area:
            h += 1
        else:
            w -= 1
    return found


def target_resolution(model_dir: str, native_pixels: int) -> int:
    """Lumina's target size: its checkpoints are named by it (``Lumina-mGPT-7B-768``); else the VQGAN's."""
    match = re.search(r"(?:^|[-_])(\d{3,4})(?:$|[-_])", model_dir.rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else native_pixels


class Lumina(Family):
    name = "lumina"
    title = "Lumina-mGPT"
    architectures = (LUMINA_ARCHITECTURE,)
    sampling = SamplingDefaults(image_temperature=1.0, image_top_k=2000, image_top_p=1.0, cfg_scale=3.0,
                                text_top_k=10)
    processor_config_required = False

    def span_format(self, vocabulary_map: dict[str, int], native_grid: int,
                    model_dir: Path | None = None) -> SpanFormat:
        if EOL_NAME not in vocabulary_map:
            raise ValueError(f"a Lumina-mGPT vocabulary_map needs its end-of-line token {EOL_NAME}")
        size_ids, n = [], 0
        while size_token_name(n) in vocabulary_map:
            size_ids.append(vocabulary_map[size_token_name(n)])
            n += 1
        if len(size_ids) < 2:
            raise ValueError(f"a Lumina-mGPT vocabulary_map needs its size tokens {size_token_name(0)}, "
                             f"{size_token_name(1)}, ...")
        return SpanFormat(native_grid, vocabulary_map[EOL_NAME], SizeTokens(tuple(size_ids), CODES_PER_PATCH),
                          guided_from_boi=True)

    def image_sizes(self, span: SpanFormat, pixels_per_code: int, model_dir: str) -> ListedSizes:
        """The trained grids around a square of the checkpoint's target size, the square first (the authors'
        examples ask for it)."""
        patch = CODES_PER_PATCH * pixels_per_code
        target = target_resolution(model_dir, span.native_grid * pixels_per_code)
        grids = lumina_grids(max(1, target // patch), len(span.size.ids) - 1)
        grids.sort(key=lambda g: g[0] != g[1])
        return ListedSizes(MappingProxyType({size_name(g, pixels_per_code): g for g in grids}))

    def qk_norm_rows(self, loaded: torch.Tensor, heads: int) -> torch.Tensor:
        """One row per model-parallel rank, repeated over that rank's heads."""
        rows = loaded.shape[0]
        if heads % rows:
            raise ValueError(f"q/k norm of {rows} rows for {heads} heads: not one row per equal group of heads")
        return loaded.repeat_interleave(heads // rows, dim=0)

    def tiny_special_tokens(self, grid: int) -> list[str]:
        """The end-of-line token and size tokens for up to 2 * grid patches a side (aspect 4 at the target)."""
        return [EOL_NAME, *(size_token_name(n) for n in range(2 * grid + 1))]

    def save_tiny(self, model, tokenizer, dst: Path, resolution: int, grid: int) -> None:
        """Their config fields, two safetensors shards and an index, and each q/k norm as one row that their
        code repeats over the heads (the heads' rows are made equal first, so the checkpoint means what the
        model computed); tokenizer files, no image-processor config."""
        from safetensors.torch import save_file

        state = {name: t.contiguous() for name, t in model.state_dict().items()}
        for name in [n for n in state if ".q_norm." in n or ".k_norm." in n]:
            state[name] = state[name][:1].clone()
            model.get_parameter(name).data.copy_(state[name].expand_as(model.get_parameter(name)))
        names = sorted(state)
        shards = {f"model-0000{i + 1}-of-00002.safetensors": names[i::2] for i in range(2)}
        for shard, keys in shards.items():
            save_file({k: state[k] for k in keys}, dst / shard, metadata={"format": "pt"})
        index = {"metadata": {"total_size": sum(t.nbytes for t in state.values())},
                 "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
        (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        config = json.loads(model.config.to_json_string())
        rope = config.pop("rope_parameters", None) or {}
        config.update(architectures=[LUMINA_ARCHITECTURE], model_parallel_size=1, mask_image_logits=True,
                      dropout=0.0, z_loss_weight=1e-5, rope_theta=rope.get("rope_theta", 10000.0), rope_scaling=None)
        (dst / "config.json").write_text(json.dumps(config, indent=2))
        tokenizer.save_pretrained(dst)


LUMINA = Lumina()
