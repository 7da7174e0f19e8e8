"""One serving path for every route: prompt -> request options -> sampling params -> admission, whose result is
the request's context (``server/context.py``); the route then runs it through the driver (``server/driver.py``)
and maps the reply onto its wire format.

Chat, Responses and Images all arrive here as a chat request (each route maps its wire fields onto one),
completions as a text prompt; from here on nothing depends on the route, so a family's defaults and the
checks of image sizes and guidance apply on all of them alike.
"""

from __future__ import annotations

import secrets

import numpy as np

from engine.frontend.client import ChameleonEngine
from engine.shared.request_options import TEXT_ONLY, RequestOptions, mode_of
from schemas.chat import ChatCompletionRequest, ChatMessage, TextPart
from schemas.completions import CompletionRequest
from server.context import RequestContext, RequestRecord, Usage
from server.errors import BadRequest
from server.prompt import Prompt, build_chat_prompt, build_text_prompt
from server.sampling import sampling_params
from server.settings import Settings


async def prepare_chat(engine: ChameleonEngine, settings: Settings, req: ChatCompletionRequest, request_id: str,
                       record: RequestRecord, *, size_param: str = "image_size",
                       editable: np.ndarray | None = None) -> RequestContext:
    """A chat-shaped request (chat, Responses, Images); ``size_param`` names ``req.image_size`` in 400s.
    ``editable`` (a masked edit): the code cells of the prompt's first image that the reply may change; the
    rest are written as they are in that image."""
    messages = _with_image_suffix(req, settings)
    prompt = await build_chat_prompt(engine, messages, settings, max_images=settings.max_images_per_request,
                                     plain=_plain(req, settings))
    kept = kept_codes(engine, prompt.token_ids, editable) if editable is not None else ()
    options = await chat_options(engine, settings, req, size_param, kept, editable)
    return _admitted(engine, settings, req, prompt, options, max_new_tokens=req.max_new_tokens, end_of_turn=True,
                     request_id=request_id, record=record)


async def prepare_text(engine: ChameleonEngine, settings: Settings, req: CompletionRequest, prompt: str | list[int],
                       request_id: str, record: RequestRecord) -> RequestContext:
    """A completions request of one ``prompt`` (text, or token ids): text replies, no end-of-turn stop."""
    options = _checked(mode=TEXT_ONLY, seed=req.seed)
    text = Prompt(build_text_prompt(engine, prompt), num_images=0)
    return _admitted(engine, settings, req, text, options, max_new_tokens=req.max_tokens, end_of_turn=False,
                     request_id=request_id, record=record)


def _admitted(engine: ChameleonEngine, settings: Settings, req: ChatCompletionRequest | CompletionRequest,
              prompt: Prompt, options: RequestOptions, *, max_new_tokens: int | None, end_of_turn: bool,
              request_id: str, record: RequestRecord) -> RequestContext:
    params = sampling_params(req, engine, len(prompt.token_ids), max_new_tokens, end_of_turn=end_of_turn,
                             family=settings.family, options=options)
    record.prompt_tokens, record.images_in = len(prompt.token_ids), prompt.num_images
    ids = prompt.token_ids
    usage = Usage(prompt_tokens=len(ids), prompt_image_tokens=sum(engine.layout.span_mask(ids)),
                  completion_tokens=[0] * params.n, completion_image_tokens=[0] * params.n, images_in=prompt.num_images)
    return RequestContext(request_id, settings.served_model_name, prompt, options, params, record, usage)


def kept_codes(engine: ChameleonEngine, prompt_ids: list[int], editable: np.ndarray) -> tuple[int, ...]:
    """Per code cell of the prompt's first image (raster order): its code where ``editable`` is False, else -1."""
    start = prompt_ids.index(engine.layout.boi)
    span = prompt_ids[start + 1:start + engine.layout.span.image_tokens(editable.shape)]
    codes = [t for t in span if t in engine.layout.code_of]
    return tuple(-1 if free else code for code, free in zip(codes, editable.ravel().tolist(), strict=True))


async def chat_options(engine: ChameleonEngine, settings: Settings, req: ChatCompletionRequest,
                       size_param: str = "image_size", kept: tuple[int, ...] = (),
                       editable: np.ndarray | None = None) -> RequestOptions:
    """The request's options: its modalities, its image sampling fields (else the checkpoint family's, but for the
    Jacobi window, whose default the engine applies within its budget), the grid of the image size it asks for (a
    masked edit's: its input image's, whose cells ``editable`` maps), guidance, and a seed for a reply that may
    write images."""
    try:
        mode = mode_of(req.modalities)
    except ValueError as exc:
        raise BadRequest(str(exc), param="modalities") from None
    family = settings.family.sampling
    image = {name: getattr(req, name) if getattr(req, name) is not None else getattr(family, name)
             for name in ("image_temperature", "image_top_k", "image_top_p")}
    grid = _image_grid(engine, req.image_size, size_param) if mode != TEXT_ONLY else None
    if editable is not None:
        own = tuple(editable.shape)
        if req.image_size not in (None, "auto") and grid not in (None, own):
            raise BadRequest(f"{size_param}: a masked edit keeps its input image's size; use 'auto'",
                             param=size_param)
        grid = own if engine.layout.span.rows_framed else None
    scale, uncond = await _guidance(engine, settings, req, mode)
    return _checked(mode=mode, seed=_request_seed(req.seed, mode), cfg_scale=scale, uncond_prompt=uncond,
                    image_grid=grid, kept_codes=kept, jacobi_window=req.jacobi_window, **image)


def _plain(req: ChatCompletionRequest, settings: Settings) -> bool:
    """Whether the prompt is written plain (no chat format): an image-only reply of a family whose authors
    prompt image generation so."""
    return settings.family.plain_image_prompt and set(req.modalities) == {"image"}


def _with_image_suffix(req: ChatCompletionRequest, settings: Settings) -> list[ChatMessage]:
    """The request's messages, the last user text of an image-only reply followed by the image prompt suffix
    (the request's, else the family's: Emu3's authors append one to every prompt)."""
    suffix = req.image_prompt_suffix if req.image_prompt_suffix is not None \
        else settings.family.sampling.image_prompt_suffix
    users = [i for i, m in enumerate(req.messages) if m.role == "user"]
    if not suffix or set(req.modalities) != {"image"} or not users:
        return req.messages
    last = req.messages[users[-1]]
    parts = last.parts
    texts = [i for i, p in enumerate(parts) if isinstance(p, TextPart)]
    if not texts:
        return req.messages
    parts[texts[-1]] = TextPart(type="text", text=parts[texts[-1]].text + suffix)
    return [*req.messages[:users[-1]], last.model_copy(update={"content": parts}), *req.messages[users[-1] + 1:]]


def _checked(**fields) -> RequestOptions:
    try:
        return RequestOptions(**fields)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _image_grid(engine: ChameleonEngine, size: str | None, param: str) -> tuple[int, int] | None:
    """The grid of a ``"WxH"`` size for a checkpoint whose images vary in size (Lumina-mGPT, Emu3); None where
    the checkpoint writes one size (or none: the sampling check refuses image output then)."""
    if not engine.can_paint:
        return None
    if size in (None, "auto"):
        grid = engine.image_grid
    else:
        try:
            grid = engine.image_sizes.grid(size)
        except ValueError as exc:
            raise BadRequest(f"{param}: {exc}", param=param) from None
    return grid if engine.layout.span.rows_framed else None


NO_GUIDANCE = ("classifier-free guidance needs the scheduler engine/plugin.py gives vLLM (guidance companions), "
               "which this server runs without: with --pipeline-parallel-size above 1, or another --scheduler-cls")


async def _guidance(engine: ChameleonEngine, settings: Settings, req: ChatCompletionRequest,
                    mode: int) -> tuple[float, tuple[int, ...]]:
    """Classifier-free guidance: the scale (the request's; for image output else the checkpoint family's), and
    the unconditional prompt, which is the negative prompt (or an empty turn) in the same chat format as the
    request's."""
    scale = req.cfg_scale
    if "cfg_scale" not in req.model_fields_set and mode != TEXT_ONLY and engine.guides:
        scale = settings.family.sampling.cfg_scale
    if scale != 1.0 and mode != TEXT_ONLY and not engine.guides:
        raise BadRequest(NO_GUIDANCE, param="cfg_scale")
    if scale == 1.0 or mode == TEXT_ONLY:
        if req.negative_prompt is not None and scale == 1.0:
            raise BadRequest("negative_prompt takes effect only with a cfg_scale other than 1",
                             param="negative_prompt")
        return scale, ()
    negative = req.negative_prompt if req.negative_prompt is not None else settings.family.sampling.negative_prompt
    if engine.layout.span.guided_from_boi and negative is None:
        return scale, ()  # the image alone (engine/worker/guidance.py)
    turn = ChatMessage(role="user", content=negative or "")
    uncond = await build_chat_prompt(engine, [turn], settings, max_images=0, plain=_plain(req, settings))
    return scale, tuple(uncond.token_ids)


def _request_seed(seed: int | None, mode: int) -> int | None:
    """The request's seed; for one that may write images and has none, a seed drawn here, at admission.

    Image codes are drawn from a generator keyed by this seed (``engine/worker/span_grammar.py``), so every
    tensor-parallel rank draws the same codes without a broadcast of sampled tokens, which Model Runner V2
    does not do. vLLM gives each choice of an ``n`` > 1 request its own seed from it (seed + index).
    """
    if seed is not None or mode == TEXT_ONLY:
        return seed
    return secrets.randbits(62)  # room for vLLM's seed + index within int64

