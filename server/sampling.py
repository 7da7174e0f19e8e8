"""Request fields -> vLLM ``SamplingParams``, with the context-length and image-span checks."""

from __future__ import annotations

from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind

from engine.frontend.client import ChameleonEngine
from engine.shared.families import Family
from engine.shared.request_options import RequestOptions
from schemas.common import SamplingFields
from server.errors import BadRequest


def sampling_params(
    req: SamplingFields, engine: ChameleonEngine, prompt_len: int, max_new_tokens: int | None,
    *, end_of_turn: bool, family: Family, options: RequestOptions,
) -> SamplingParams:
    """One request's params, carrying ``options`` (the only place they are written to ``extra_args``);
    ``end_of_turn`` makes the chat separator a stop token; ``family`` gives the text top-k where the request
    sets none."""
    image_only = options.image_only
    image_len = engine.layout.span.image_tokens(options.image_grid or engine.image_grid)
    if options.writes_images and not engine.can_paint:
        raise BadRequest("this server has no VQGAN decoder, so it cannot write images: start it with --vqgan",
                         param="modalities", code="image_output_unavailable")
    room = engine.max_model_len - prompt_len
    needed = image_len if image_only else 1
    if room < needed:
        raise BadRequest(f"the prompt has {prompt_len} tokens; this model's context is {engine.max_model_len}"
                         + (f" and an image takes {image_len}" if needed > 1 else ""),
                         param="messages", code="context_length_exceeded")
    if max_new_tokens is not None and max_new_tokens > room:
        raise BadRequest(f"max_tokens {max_new_tokens} + prompt {prompt_len} tokens exceeds this model's context "
                         f"of {engine.max_model_len}", param="max_tokens", code="context_length_exceeded")
    if max_new_tokens is None:
        max_new_tokens = image_len if image_only else room
    if req.min_tokens and image_only:
        # min_tokens forbids the stop tokens, EOI among them, and the span grammar re-allows nothing
        raise BadRequest("min_tokens does not apply to an image-only reply (one image, then the reply ends)",
                         param="min_tokens")
    if req.min_tokens > max_new_tokens:
        raise BadRequest("min_tokens must not exceed max_tokens", param="min_tokens")
    bias = {int(k): v for k, v in (req.logit_bias or {}).items()}
    if any(tid >= engine.layout.vocab_size for tid in bias):
        raise BadRequest("logit_bias names a token id outside the vocabulary", param="logit_bias")
    stop_ids = [engine.layout.sep] if end_of_turn else []
    if image_only:
        stop_ids.append(engine.layout.eoi)  # one image, then done
    # An image-only reply has no text: no stop string can match, and vLLM's incremental detokenizer would
    # re-decode the whole open span at every code (its window grows while skipped tokens add no text).
    stop = [] if image_only else req.stop_list
    return SamplingParams(
        n=req.n,
        temperature=_engine_temperature(req) if image_only else req.temperature,
        top_p=req.top_p,
        top_k=req.top_k if family.sampling.text_top_k is None or "top_k" in req.model_fields_set
        else family.sampling.text_top_k,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        logit_bias=bias or None,
        repetition_penalty=req.repetition_penalty,
        seed=options.seed,
        stop=stop,
        detokenize=not image_only,
        # With images in the reply, the stop string's text is held back and dropped by the front end
        # (engine.frontend.splitter.StopTextHold), so that text before an image is not released after it.
        include_stop_str_in_output=bool(stop) and options.writes_images,
        stop_token_ids=stop_ids,
        ignore_eos=req.ignore_eos,
        max_tokens=max_new_tokens,
        min_tokens=req.min_tokens,
        logprobs=req.num_logprobs,
        output_kind=RequestOutputKind.DELTA,
        extra_args=options.extra_args(),
    )


def _engine_temperature(req: SamplingFields) -> float:
    """vLLM's temperature for an image-only reply, whose every token the span processor picks (it leaves one
    finite logit per row): greedy, so vLLM's sampler takes an argmax instead of drawing over the whole
    vocabulary (a large share of a step's time on the tiny model: bench/RESULTS.md); vLLM refuses
    greedy with ``n`` > 1, which then keeps a random draw that can only pick the same token."""
    return 0.0 if req.n == 1 else 1.0
