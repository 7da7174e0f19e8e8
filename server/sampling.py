"""Request fields -> vLLM ``SamplingParams``, with the context-length and image-span checks."""

from __future__ import annotations

from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind

from engine.runner import ChameleonEngine
from engine.span_grammar import SpanParams
from schemas.common import SamplingFields
from server.errors import BadRequest

IMAGE_ARGS = ("image_temperature", "image_top_k", "image_top_p")


def span_args(modalities: list[str], fields: object) -> dict:
    """``extra_args`` for the span logits processor: modalities and the image sampling fields that are set."""
    args = {"modalities": list(modalities)}
    args.update({k: getattr(fields, k) for k in IMAGE_ARGS if getattr(fields, k, None) is not None})
    return args


def sampling_params(
    req: SamplingFields, engine: ChameleonEngine, prompt_len: int, max_new_tokens: int | None,
    *, end_of_turn: bool, extra_args: dict | None = None,
) -> SamplingParams:
    """One request's params; ``end_of_turn`` makes the chat separator a stop token."""
    extra_args = extra_args or {"modalities": ["text"]}
    try:
        SpanParams.from_extra_args(extra_args)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    modalities = set(extra_args["modalities"])
    grid = extra_args.get("image_grid") or engine.image_grid or (engine.layout.span.native_grid,) * 2
    image_len = 1 + engine.layout.span.span_length(tuple(grid))  # BOI + the family's span + EOI
    if "image" in modalities and not engine.can_paint:
        raise BadRequest("this server has no VQGAN decoder, so it cannot write images: start it with --vqgan",
                         param="modalities", code="image_output_unavailable")
    room = engine.max_model_len - prompt_len
    needed = image_len if modalities == {"image"} else 1
    if room < needed:
        raise BadRequest(f"the prompt has {prompt_len} tokens; this model's context is {engine.max_model_len}"
                         + (f" and an image takes {image_len}" if needed > 1 else ""),
                         param="messages", code="context_length_exceeded")
    if max_new_tokens is not None and max_new_tokens > room:
        raise BadRequest(f"max_tokens {max_new_tokens} + prompt {prompt_len} tokens exceeds this model's context "
                         f"of {engine.max_model_len}", param="max_tokens", code="context_length_exceeded")
    if max_new_tokens is None:
        max_new_tokens = image_len if modalities == {"image"} else room
    if req.min_tokens > max_new_tokens:
        raise BadRequest("min_tokens must not exceed max_tokens", param="min_tokens")
    bias = {int(k): v for k, v in (req.logit_bias or {}).items()}
    if any(tid >= engine.layout.vocab_size for tid in bias):
        raise BadRequest("logit_bias names a token id outside the vocabulary", param="logit_bias")
    stop_ids = [engine.layout.sep] if end_of_turn else []
    if modalities == {"image"}:
        stop_ids.append(engine.layout.eoi)  # one image, then done
    return SamplingParams(
        n=req.n,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        logit_bias=bias or None,
        repetition_penalty=req.repetition_penalty,
        seed=req.seed,
        stop=req.stop_list,
        stop_token_ids=stop_ids,
        ignore_eos=req.ignore_eos,
        max_tokens=max_new_tokens,
        min_tokens=req.min_tokens,
        logprobs=req.num_logprobs,
        output_kind=RequestOutputKind.DELTA,
        extra_args=extra_args,
    )
