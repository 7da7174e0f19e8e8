"""Request fields -> vLLM ``SamplingParams``, with the context-length check."""

from __future__ import annotations

from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind

from engine.runner import ChameleonEngine
from schemas.common import SamplingFields
from server.errors import BadRequest


def sampling_params(
    req: SamplingFields, engine: ChameleonEngine, prompt_len: int, max_new_tokens: int | None,
    *, end_of_turn: bool,
) -> SamplingParams:
    """One request's params; ``end_of_turn`` makes the chat separator a stop token."""
    room = engine.max_model_len - prompt_len
    if room <= 0:
        raise BadRequest(f"the prompt has {prompt_len} tokens; this model's context is {engine.max_model_len}",
                         param="messages", code="context_length_exceeded")
    if max_new_tokens is not None and max_new_tokens > room:
        raise BadRequest(f"max_tokens {max_new_tokens} + prompt {prompt_len} tokens exceeds this model's context "
                         f"of {engine.max_model_len}", param="max_tokens", code="context_length_exceeded")
    if req.min_tokens > (max_new_tokens or room):
        raise BadRequest("min_tokens must not exceed max_tokens", param="min_tokens")
    return SamplingParams(
        n=req.n,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        repetition_penalty=req.repetition_penalty,
        seed=req.seed,
        stop=req.stop_list,
        stop_token_ids=[engine.layout.sep] if end_of_turn else [],
        ignore_eos=req.ignore_eos,
        max_tokens=max_new_tokens or room,
        min_tokens=req.min_tokens,
        output_kind=RequestOutputKind.DELTA,
        extra_args={"modalities": ["text"]},
    )
