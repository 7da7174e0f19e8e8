"""Emu3's span (the grid as text after BOI, EOL-closed rows, end of frame, EOI) on a small fake vocabulary:
every position of the grammar, on the host and on the device path; the position read from history on both;
the splitter, the detokenizer's view of it, the token mask, and the sizes offered."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.frontend.splitter import ImageCodes, SpanSplitter
from engine.shared.families import EMU3
from engine.shared.families.emu3 import EMU3_ARCHITECTURE, generate_grid
from engine.shared.request_options import IMAGE_ONLY, INTERLEAVED, RequestOptions
from engine.shared.vocab import CheckpointError, TokenLayout
from engine.worker.span_grammar import SpanGrammar
from engine.worker.span_rules import span_position

V = 64
DIGITS = {str(d): 40 + d for d in range(10)}
VOCAB = {**{f"<|visual token {i:06d}|>": 4 + i for i in range(8)}, "<|image start|>": 13, "<|image end|>": 12,
         "<image>": 14, "<|extra_204|>": 15, "<|extra_200|>": 20, "<|extra_201|>": 21, "<|image token|>": 22,
         "*": 50, **DIGITS}
LAYOUT = TokenLayout.from_vocabulary_map(VOCAB, V, 16, [EMU3_ARCHITECTURE])
CODES, BOI, EOI, EOL, EOF, OPEN, TIMES = set(range(4, 12)), 13, 12, 20, 21, 22, 50


def allowed(row: torch.Tensor) -> set[int]:
    return set(torch.isfinite(row).nonzero().flatten().tolist())


def expected_span(rows: int, cols: int) -> list[object]:
    prefix = [*(DIGITS[d] for d in str(rows)), TIMES, *(DIGITS[d] for d in str(cols)), OPEN]
    return [*({t} for t in prefix), *([*["code"] * cols, {EOL}] * rows), {EOF}, {EOI}]


def test_the_layout_reads_emu3s_names():
    assert (LAYOUT.boi, LAYOUT.eoi, LAYOUT.sep, LAYOUT.span.eol, LAYOUT.span.trailer) == (BOI, EOI, 15, EOL, (EOF,))
    assert LAYOUT.span.prefix((12, 3)) == (41, 42, TIMES, 43, OPEN)
    assert LAYOUT.span.grid_of_prefix([41, 42, TIMES, 43, OPEN]) == (12, 3)
    assert LAYOUT.span.grid_of_prefix([41, 42, TIMES, 43]) is None
    assert LAYOUT.span.span_length((12, 3)) == 5 + 12 * 4 + 1 + 1
    assert set(LAYOUT.span_token_ids()) == CODES | {BOI, EOI, EOL, EOF, OPEN}  # digits stay text
    with pytest.raises(CheckpointError, match="extra_201"):
        TokenLayout.from_vocabulary_map({k: v for k, v in VOCAB.items() if k != "<|extra_201|>"}, V, 16,
                                        [EMU3_ARCHITECTURE])


@pytest.mark.parametrize("grid", [(2, 3), (12, 1), (4, 4)])
def test_every_position_host_and_device_alike(grid):
    """An image-only reply: BOI forced, then the prefix, rows, EOF, EOI; the device path (Model Runner V2's)
    makes the same choice at every step, and reads the same position from the same history."""
    host, device = SpanGrammar(LAYOUT, max_slots=2), SpanGrammar(LAYOUT, max_slots=2)
    options = RequestOptions(mode=IMAGE_ONLY, image_temperature=0.0, image_grid=grid)
    host.add(0, options, [1, 2], 0)
    device.add(0, options, [1, 2], 0)
    slots, history = np.array([0]), [1, 2]
    for want in [{BOI}, *expected_span(*grid)]:
        logits = torch.randn(1, V)
        (tok,) = allowed(host.apply(logits.clone(), slots)[0])
        window = device.tail_length(0) + 2
        tail = torch.tensor([[*([0] * window), *history][-window:]])
        at = torch.arange(len(history) - window, len(history)).unsqueeze(0)
        pos = device.rules.positions(slots, tail, at)
        assert int(pos[0]) == span_position(history, LAYOUT, LAYOUT.span.prefix(grid)) == host.state.pos[0]
        num_output = torch.tensor([len(history) - 2])
        (dev_tok,) = allowed(device.apply_on_device(logits.clone(), slots, np.array([0]), pos, num_output)[0])
        assert tok == dev_tok and (tok in CODES if want == "code" else {tok} == want)
        host.advance(slots, np.array([tok]))
        history.append(tok)
    assert host.state.pos[0] == -1 and history[-1] == EOI


def test_text_after_boi_that_is_not_the_prefix_is_not_a_span():
    prefix = LAYOUT.span.prefix((4, 4))
    assert span_position([1, BOI, *prefix[:2]], LAYOUT, prefix) == 2
    assert span_position([1, BOI, 44, 44], LAYOUT, prefix) == -1  # "44": not "4*4"
    assert span_position([1, BOI, *prefix, 4, 5, EOL, EOF, EOI], LAYOUT, prefix) == -1  # closed


def test_interleaved_text_may_use_digits_but_never_the_span_tokens():
    g = SpanGrammar(LAYOUT, max_slots=1)
    g.add(0, RequestOptions(mode=INTERLEAVED), [1, 2], 0)
    row = allowed(g.apply(torch.randn(1, V), np.array([0]))[0])
    assert set(DIGITS.values()) | {TIMES, BOI} <= row and not row & (CODES | {EOI, EOL, EOF, OPEN})


def test_splitter_mask_and_input_spans():
    span = LAYOUT.image_span(torch.tensor([[0, 1, 2], [3, 4, 5]]))
    assert span == [BOI, 42, TIMES, 43, OPEN, 4, 5, 6, EOL, 7, 8, 9, EOL, EOF, EOI]
    splitter = SpanSplitter(LAYOUT, lambda ids: "t" * len(ids))
    pieces = splitter.feed([1, *span[:3]], "x") + splitter.feed(span[3:], "")
    assert pieces == ["t", ImageCodes([0, 1, 2, 3, 4, 5], (2, 3))]
    assert LAYOUT.span_mask([1, *span, 42]) == [False, *[True] * len(span), False]
    assert LAYOUT.span_mask([TIMES, 43, OPEN], open_span=True) == [True] * 3


def test_sizes_are_the_authors_ratios_at_their_area(tmp_path):
    assert generate_grid("1:1", 720 * 720, 8) == (90, 90)
    assert generate_grid("16:9", 720 * 720, 8) == (68, 120)
    sizes = EMU3.image_sizes(LAYOUT.span, 8, str(tmp_path))  # no image-processor settings: transformers' defaults
    assert sizes.default == (90, 90) and next(iter(sizes.offered.items())) == ("720x720", "1:1")
    assert sizes.offered["960x544"] == "16:9" and sizes.grid("960x544") == (68, 120)
    (tmp_path / "preprocessor_config.json").write_text('{"min_pixels": 1024, "max_pixels": 1024}')
    assert EMU3.image_sizes(LAYOUT.span, 8, str(tmp_path)).default == (4, 4)


def test_any_size_rounds_to_whole_codes_within_the_pixel_range(tmp_path):
    """``Emu3Processor.calculate_generate_size`` of the ratio W:H at the area W * H, bounded by the range."""
    from transformers import Emu3Processor

    (tmp_path / "preprocessor_config.json").write_text('{"min_pixels": 1024, "max_pixels": 4096}')
    sizes = EMU3.image_sizes(LAYOUT.span, 8, str(tmp_path))
    assert sizes.default == (8, 8)  # the authors' 720 x 720, kept within the range
    for width, height in [(64, 64), (33, 33), (60, 36), (100, 20), (20, 100), (48, 28)]:
        theirs = Emu3Processor.calculate_generate_size(None, f"{width}:{height}", width * height, 8)
        assert sizes.grid(f"{width}x{height}") == theirs
    for size in ["64x72", "24x24", "2000x8", "0x64", "64", "64 x 64", "-8x64"]:
        with pytest.raises(ValueError, match="1024 to 4096 pixels in all"):
            sizes.grid(size)
    with pytest.raises(ValueError, match="'64x72' would be written as 64x72"):
        sizes.grid("64x72")


def test_the_prefix_is_written_as_the_checkpoints_tokenizer_writes_it(tmp_path):
    """BAAI's converted tokenizer groups digits and merges them: "12" may be one token."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {**{k: v for k, v in VOCAB.items() if len(k) == 1}, "12": 60}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[("1", "2")]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    layout = TokenLayout.from_vocabulary_map(VOCAB, V, 16, [EMU3_ARCHITECTURE], tmp_path)
    assert layout.span.prefix((12, 3)) == (*tokenizer.encode("12*3").ids, OPEN) == (60, TIMES, 43, OPEN)
    assert layout.span.prefix((112, 1)) == (41, 60, TIMES, 41, OPEN)
    assert layout.span.grid_of_prefix([60, TIMES, 43, OPEN]) == (12, 3)
    g = SpanGrammar(layout, max_slots=1)
    g.add(0, RequestOptions(mode=IMAGE_ONLY, image_temperature=0.0, image_grid=(12, 3)), [1], 0)
    assert g.tail_length(0) == 1 + 4 + 12 * 4 + 2
