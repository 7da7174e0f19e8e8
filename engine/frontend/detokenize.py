"""vLLM's fast incremental detokenizer with image spans kept out of it: O(1) work per span token.

tokenizers' ``DecodeStream`` re-decodes, at every step, all ids since the last one that produced text.
Image codes are special tokens on the output side (``client.codes_as_special``) and produce none, so
inside a span that window grows by one id per code: a 1,024-code image costs ~half a million id decodes,
a 4,096-code Lumina-mGPT image ~8 million. Span tokens never are text, so they do not enter the stream:
the text, and vLLM's stop-string matching on it, stay what vLLM writes with ``skip_special_tokens`` (its
default); with it off, span tokens still render as nothing, where vLLM would spell out their names.

Version-pinned like ``codes_as_special``: vLLM 0.32's ``OutputProcessor.add_request`` builds each
request's detokenizer, and its ``FastIncrementalDetokenizer.decode_next`` is the per-token step.
"""

from __future__ import annotations

import functools

from vllm.v1.engine.detokenizer import FastIncrementalDetokenizer

from engine.shared.vocab import TokenLayout


class SpanSkippingDetokenizer(FastIncrementalDetokenizer):
    """``FastIncrementalDetokenizer`` that renders span tokens (BOI, codes, EOI, size and row tokens, and every
    token between a BOI and its EOI: Emu3's size prefix is text by id) as nothing without stepping the decode
    stream."""

    def __init__(self, tokenizer, request, layout: TokenLayout) -> None:
        super().__init__(tokenizer, request)
        self._span_ids, self._boi, self._eoi = layout.span_token_ids(), layout.boi, layout.eoi
        self._in_span = False

    def decode_next(self, next_token_id: int) -> str:
        if self._in_span or next_token_id in self._span_ids:
            self._in_span = (self._in_span or next_token_id == self._boi) and next_token_id != self._eoi
            return ""
        return super().decode_next(next_token_id)


def skip_spans_when_detokenizing(output_processor, layout: TokenLayout) -> None:
    """Give every request that ``output_processor`` (an AsyncLLM's) adds from now on a
    :class:`SpanSkippingDetokenizer` where vLLM would build its fast one."""
    add = output_processor.add_request

    @functools.wraps(add)
    def add_request(request, *args, **kwargs) -> None:
        add(request, *args, **kwargs)
        state = output_processor.request_states.get(request.request_id)
        if state is not None and type(state.detokenizer) is FastIncrementalDetokenizer \
                and not state.detokenizer.token_ids:
            state.detokenizer = SpanSkippingDetokenizer(output_processor.tokenizer, request, layout)

    output_processor.add_request = add_request
