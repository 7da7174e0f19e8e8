"""The early-fusion transformer of every family as a vLLM 0.32 model, registered by ``engine.plugin``.

A text-token decoder: the front end VQ-encodes images and places their spans in the prompt,
so there is no multimodal processor and no VQ model here, and no logit is masked (the
image-span grammar lives in our logits processor). Structure follows vLLM's ``models/llama.py``;
numerics follow transformers' ``models/chameleon/modeling_chameleon.py`` (qk-layernorm per head,
optional Swin norm), which without those is Llama, as Emu3's text model
(``models/emu3/modeling_emu3.py``) is: a family says which (``Family.qk_norm``) and how its
checkpoint names the weights (``Family.weight_name``).
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.distributed import (
    get_pp_group,
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
)
from vllm.logger import init_logger
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.interfaces import SupportsPP
from vllm.model_executor.models.utils import (
    PPMissingLayer,
    extract_layer_index,
    is_pp_missing_parameter,
    make_empty_intermediate_tensors_factory,
    make_layers,
    maybe_prefix,
)
from vllm.model_executor.utils import set_weight_attrs
from vllm.sequence import IntermediateTensors

from engine.shared.families import Family, for_architectures
from engine.shared.kv_size import kv_heads_per_rank
from engine.worker.live import register_model

logger = init_logger(f"vllm.{__name__}")  # under "vllm" so it reaches vLLM's log handler

_QK_NORM_EPS = 1e-5  # transformers' ChameleonLayerNorm: fixed, not from the config


class ChameleonQKNorm(nn.Module):
    """LayerNorm over head_dim only, then each head's own scale and shift.

    ``weight``/``bias`` are (local heads, head_dim): under TP each rank keeps the rows
    of the heads its QKV shard computes (KV heads replicated when fewer than ranks). A checkpoint's tensors
    become one row per head as its family lays them out (``Family.qk_norm_rows``).
    """

    def __init__(self, total_heads: int, local_heads: int, head_dim: int, family: Family) -> None:
        super().__init__()
        self.total_heads, self.local_heads, self.head_dim = total_heads, local_heads, head_dim
        self.family = family
        tp_rank, tp_size = get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()
        replicas = max(1, tp_size // total_heads)
        self.first_head = (tp_rank // replicas) * local_heads
        self.weight = nn.Parameter(torch.ones(local_heads, head_dim))
        self.bias = nn.Parameter(torch.zeros(local_heads, head_dim))
        for p in (self.weight, self.bias):
            set_weight_attrs(p, {"weight_loader": self._load_heads})

    def _load_heads(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        loaded = self.family.qk_norm_rows(loaded, self.total_heads)
        default_weight_loader(param, loaded.narrow(0, self.first_head, self.local_heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (tokens, local_heads * head_dim)
        h = x.view(-1, self.local_heads, self.head_dim)
        h = F.layer_norm(h, (self.head_dim,), eps=_QK_NORM_EPS) * self.weight + self.bias
        return h.view_as(x)


class ChameleonMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str, bias: bool,
                 prefix: str = "") -> None:
        super().__init__()
        if hidden_act != "silu":
            raise ValueError(f"unsupported activation {hidden_act!r}: Chameleon uses silu")
        self.gate_up_proj = MergedColumnParallelLinear(
            hidden_size, [intermediate_size] * 2, bias=bias, prefix=f"{prefix}.gate_up_proj"
        )
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, bias=bias,
                                           prefix=f"{prefix}.down_proj")
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self.gate_up_proj(x)
        x, _ = self.down_proj(self.act_fn(x))
        return x


class ChameleonAttention(nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        self.layer_index = extract_layer_index(prefix)
        config: PretrainedConfig = vllm_config.model_config.hf_text_config
        family = for_architectures(vllm_config.model_config.architectures)
        tp_size = get_tensor_model_parallel_world_size()
        total_heads, total_kv = config.num_attention_heads, config.num_key_value_heads
        if total_heads % tp_size or (total_kv % tp_size and tp_size % total_kv):
            raise ValueError(f"{total_heads} heads / {total_kv} KV heads do not split over TP={tp_size}")
        self.num_heads = total_heads // tp_size
        self.num_kv_heads = kv_heads_per_rank(total_kv, tp_size)
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // total_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim

        bias = bool(getattr(config, "attention_bias", False))
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size, self.head_dim, total_heads, total_kv, bias=bias, prefix=f"{prefix}.qkv_proj",
        )
        self.o_proj = RowParallelLinear(total_heads * self.head_dim, config.hidden_size, bias=bias,
                                        prefix=f"{prefix}.o_proj")
        self.qk_norm = family.qk_norm
        if self.qk_norm:
            self.q_norm = ChameleonQKNorm(total_heads, self.num_heads, self.head_dim, family)
            self.k_norm = ChameleonQKNorm(total_kv, self.num_kv_heads, self.head_dim, family)
        self.rotary_emb = get_rope(
            self.head_dim,
            max_position=config.max_position_embeddings,
            is_neox_style=True,
            rope_parameters=config.rope_parameters,
        )
        self.attn = Attention(
            self.num_heads, self.head_dim, self.head_dim**-0.5,
            num_kv_heads=self.num_kv_heads, cache_config=vllm_config.cache_config,
            quant_config=vllm_config.quant_config, prefix=f"{prefix}.attn",
        )

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        qkv, _ = self.qkv_proj(hidden_states)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)  # norm before rotary
        q, k = self.rotary_emb(positions, q, k)
        out, _ = self.o_proj(self.attn(q, k, v))
        return out


class ChameleonDecoderLayer(nn.Module):
    """Pre-norm layer, or with ``config.swin_norm`` the norms applied to each sublayer's output.

    The residual stream is ``hidden_states + residual`` (llama's fused-add convention), so
    both variants chain with each other and with the final norm the same way.
    """

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config: PretrainedConfig = vllm_config.model_config.hf_text_config
        self.swin_norm = bool(getattr(config, "swin_norm", False))
        self.self_attn = ChameleonAttention(vllm_config=vllm_config, prefix=f"{prefix}.self_attn")
        self.mlp = ChameleonMLP(config.hidden_size, config.intermediate_size, config.hidden_act,
                                bias=bool(getattr(config, "mlp_bias", False)), prefix=f"{prefix}.mlp")
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self, positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.swin_norm:
            h = hidden_states if residual is None else hidden_states + residual
            h = h + self.input_layernorm(self.self_attn(positions, h))
            return self.post_attention_layernorm(self.mlp(h)), h
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(positions, hidden_states)
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        return self.mlp(hidden_states), residual


@support_torch_compile(
    dynamic_arg_dims={"input_ids": 0, "positions": 0, "intermediate_tensors": 0, "inputs_embeds": 0}
)
class ChameleonModel(nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config: PretrainedConfig = vllm_config.model_config.hf_text_config
        pp = get_pp_group()
        if pp.is_first_rank or (config.tie_word_embeddings and pp.is_last_rank):
            self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size,
                                                       prefix=f"{prefix}.embed_tokens")
        else:
            self.embed_tokens = PPMissingLayer()
        self.start_layer, self.end_layer, self.layers = make_layers(
            config.num_hidden_layers,
            lambda prefix: ChameleonDecoderLayer(vllm_config=vllm_config, prefix=prefix),
            prefix=f"{prefix}.layers",
        )
        if pp.is_last_rank:
            self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        else:
            self.norm = PPMissingLayer()
        self.make_empty_intermediate_tensors = make_empty_intermediate_tensors_factory(
            ["hidden_states", "residual"], config.hidden_size
        )

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor | IntermediateTensors:
        if get_pp_group().is_first_rank:
            hidden_states = inputs_embeds if inputs_embeds is not None else self.embed_input_ids(input_ids)
            residual = None
        else:
            hidden_states = intermediate_tensors["hidden_states"]
            residual = intermediate_tensors["residual"]
        for layer in islice(self.layers, self.start_layer, self.end_layer):
            hidden_states, residual = layer(positions, hidden_states, residual)
        if not get_pp_group().is_last_rank:
            return IntermediateTensors({"hidden_states": hidden_states, "residual": residual})
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class ChameleonForConditionalGeneration(nn.Module, SupportsPP):
    # (fused parameter, checkpoint shard, shard id)
    stacked_params_mapping = (
        (".qkv_proj", ".q_proj", "q"),
        (".qkv_proj", ".k_proj", "k"),
        (".qkv_proj", ".v_proj", "v"),
        (".gate_up_proj", ".gate_proj", 0),
        (".gate_up_proj", ".up_proj", 1),
    )
    packed_modules_mapping: ClassVar[dict[str, list[str]]] = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config: PretrainedConfig = vllm_config.model_config.hf_text_config
        self.config = config
        self.family = for_architectures(vllm_config.model_config.architectures)
        register_model(self)  # for Model Runner V2's span processor (engine/worker/live.py)
        logger.info("chameleon-serve plugin model for %s (swin_norm=%s, qk_norm=%s)", self.family.title,
                    getattr(config, "swin_norm", False), self.family.qk_norm)
        self.model = ChameleonModel(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))
        if get_pp_group().is_last_rank:
            self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size,
                                          prefix=maybe_prefix(prefix, "lm_head"))
            if config.tie_word_embeddings:
                self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
            self.logits_processor = LogitsProcessor(config.vocab_size)
        else:
            self.lm_head = PPMissingLayer()
        self.make_empty_intermediate_tensors = self.model.make_empty_intermediate_tensors
        self.raw_logits: torch.Tensor | None = None  # the last compute_logits output

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor | IntermediateTensors:
        return self.model(input_ids, positions, intermediate_tensors, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """Plain logits over the whole vocabulary: image codes are not masked here.

        The last ones are kept (a reference, no copy) for the span processor on Model Runner V2, which
        runs custom processors after penalties: it samples image codes from these, as on V1.
        """
        self.raw_logits = self.logits_processor(self.lm_head, hidden_states)
        return self.raw_logits

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load the transformer from the checkpoint's names as its family maps them; what maps to None (the VQ
        model's weights) is skipped and not reported.

        vLLM only checks that every model parameter was loaded, so skipped names need not
        be returned.
        """
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            name = self.family.weight_name(name)
            if name is None or "rotary_emb.inv_freq" in name:
                continue
            if self.config.tie_word_embeddings and name == "lm_head.weight":
                continue
            for fused, shard, shard_id in self.stacked_params_mapping:
                if shard in name:
                    name = name.replace(shard, fused)
                    if is_pp_missing_parameter(name, self):
                        break
                    param = params[name]
                    param.weight_loader(param, tensor, shard_id)
                    loaded.add(name)
                    break
            else:
                if is_pp_missing_parameter(name, self):
                    continue
                param = params[name]
                getattr(param, "weight_loader", default_weight_loader)(param, tensor)
                loaded.add(name)
        return loaded
