"""The output detokenizer keeps image spans out of tokenizers' decode stream, and its text is vLLM's."""

from __future__ import annotations

import pytest
from vllm.tokenizers import get_tokenizer
from vllm.v1.engine.detokenizer import FastIncrementalDetokenizer
from vllm.v1.engine.output_processor import OutputProcessor

from bench.detokenize_bench import engine_request
from engine.frontend.client import codes_as_special
from engine.frontend.detokenize import SpanSkippingDetokenizer, skip_spans_when_detokenizing
from engine.offline.tiny import TinySpec, make_tiny
from engine.shared.vocab import TokenLayout


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = make_tiny(tmp_path_factory.mktemp("tiny"), TinySpec(grid=4, codebook_size=64))
    layout = TokenLayout.from_checkpoint(model)
    return codes_as_special(get_tokenizer(str(model)), layout), layout


def _request(tokenizer, request_id: str = "r", **params):
    return engine_request([tokenizer.bos_token_id, *tokenizer.encode("Draw", add_special_tokens=False)], request_id,
                          **params)


def _reply(tokenizer, layout: TokenLayout, images: int = 2) -> list[int]:
    """Text, then images each between the two byte-level halves of an "é" (text held across the span)."""
    text = tokenizer.encode(" Once upon a time", add_special_tokens=False)
    half_a, half_b = tokenizer.convert_tokens_to_ids(["Ã", "©"])  # UTF-8 of "é", byte-level
    span = [layout.boi, *layout.code_to_id[:16], layout.eoi]
    out = list(text)
    for _ in range(images):
        out += [half_a, *span, half_b, *text]
    return out


def _decode(detokenizer, tokens: list[int]) -> tuple[str, str | None]:
    stop = None
    for t in tokens:
        stop = detokenizer.update([t], False) or stop
        if stop:
            break
    return detokenizer.output_text, stop


@pytest.mark.parametrize("params", [{}, {"stop": ["timeé"]}, {"stop": ["é Once"], "include_stop_str_in_output": True},
                                    {"skip_special_tokens": False}])
def test_text_and_stops_are_vllms(setup, params):
    tokenizer, layout = setup
    ids = layout.span_token_ids()
    reply = _reply(tokenizer, layout)
    ours = _decode(SpanSkippingDetokenizer(tokenizer, _request(tokenizer, **params), layout), reply)
    text_only = _decode(FastIncrementalDetokenizer(tokenizer, _request(tokenizer, **params)),
                        [t for t in reply if t not in ids])
    assert ours == text_only  # span tokens render as nothing, even where vLLM would render special tokens
    if params.get("skip_special_tokens", True):  # and then that is what vLLM's own detokenizer writes too
        assert ours == _decode(FastIncrementalDetokenizer(tokenizer, _request(tokenizer, **params)), reply)
    stop = params.get("stop", [None])[0]
    assert ours[1] == stop  # each stop string spans an image
    assert stop or "é" in ours[0]  # the two halves of the character meet across the images


class CountingStream:
    """A decode stream that counts the ids it is stepped with."""

    def __init__(self, stream) -> None:
        self.stream, self.ids = stream, []

    def step(self, tokenizer, token_id):
        self.ids.append(token_id)
        return self.stream.step(tokenizer, token_id)


def test_span_tokens_never_step_the_decode_stream(setup):
    tokenizer, layout = setup
    ids = layout.span_token_ids()
    detokenizer = SpanSkippingDetokenizer(tokenizer, _request(tokenizer), layout)
    detokenizer.stream = counting = CountingStream(detokenizer.stream)
    reply = _reply(tokenizer, layout, images=3)
    _decode(detokenizer, reply)
    assert counting.ids == [t for t in reply if t not in ids]
    assert len(reply) - len(counting.ids) == 3 * 18  # BOI, 16 codes, EOI per image


def test_an_output_processor_builds_it_for_new_requests(setup):
    tokenizer, layout = setup
    processor = OutputProcessor(tokenizer, log_stats=False)
    skip_spans_when_detokenizing(processor, layout)
    processor.add_request(_request(tokenizer, stop=["x"]), None)
    processor.add_request(_request(tokenizer, "q", detokenize=False), None)
    assert type(processor.request_states["r"].detokenizer) is SpanSkippingDetokenizer
    assert type(processor.request_states["q"].detokenizer) is not SpanSkippingDetokenizer  # no text asked for
