"""Lumina-mGPT's span grammar (size tokens, EOL-closed rows of the request's grid) on a small fake vocabulary:
the vectorized masks at every position, resumption from history, the splitter, and the sizes it offers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.frontend.splitter import ImageCodes, SpanSplitter
from engine.shared.families import CHAMELEON, LUMINA
from engine.shared.families.lumina import (
    LUMINA_ARCHITECTURE,
    lumina_grids,
    size_token_name,
    target_resolution,
)
from engine.shared.request_options import IMAGE_ONLY, INTERLEAVED, TEXT_ONLY, RequestOptions
from engine.shared.span_format import SpanFormat
from engine.shared.vocab import (
    BOI_NAME,
    EOI_NAME,
    IMAGE_PLACEHOLDER_NAME,
    SEP_NAME,
    CheckpointError,
    TokenLayout,
    code_name,
)
from engine.worker.span_grammar import SpanGrammar

V, NATIVE = 48, 4
VOCAB = {**{code_name(i): 4 + i for i in range(8)}, EOI_NAME: 12, BOI_NAME: 13, IMAGE_PLACEHOLDER_NAME: 14,
         SEP_NAME: 15, "<reserved08799>": 20, **{size_token_name(n): 30 + n for n in range(5)}}
LAYOUT = TokenLayout.from_vocabulary_map(VOCAB, V, NATIVE * NATIVE, [LUMINA_ARCHITECTURE])
CODES, BOI, EOI, EOL = set(range(4, 12)), 13, 12, 20
SIZES = set(range(30, 35))
TEXT = set(range(V)) - CODES - SIZES - {BOI, EOI, EOL}


def allowed(row: torch.Tensor) -> set[int]:
    return set(torch.isfinite(row).nonzero().flatten().tolist())


def expected_span(rows: int, cols: int) -> list[object]:
    """What the grammar must allow after BOI, position by position: a set of ids or 'code'."""
    return [{30 + rows // 2}, {30 + cols // 2}, *([*["code"] * cols, {EOL}] * rows), {EOI}]


@pytest.mark.parametrize("grid", [(2, 6), (6, 2), (4, 4), (2, 2)])
def test_every_position_of_a_lumina_span(grid):
    g = SpanGrammar(LAYOUT, max_slots=4)
    g.add(0, RequestOptions(mode=INTERLEAVED, image_temperature=1.0, image_grid=grid), [1, 2], 0)
    slots = np.array([0])
    g.advance(slots, np.array([BOI]))
    for want in expected_span(*grid):
        row = g.apply(torch.randn(1, V), slots)[0]
        (tok,) = allowed(row)
        assert tok in CODES if want == "code" else {tok} == want
        assert bool(g.sampling_code(slots)[0]) == (want == "code")
        g.advance(slots, np.array([tok]))
    assert allowed(g.apply(torch.randn(1, V), slots)[0]) == TEXT | {BOI}


def test_one_batch_mixes_grids_positions_and_text_rows():
    """Every row of one apply at a different place of its own span, plus text rows."""
    grid = (2, 4)
    want = expected_span(*grid)
    g = SpanGrammar(LAYOUT, max_slots=len(want) + 2)
    for slot in range(len(want)):
        g.add(slot, RequestOptions(mode=IMAGE_ONLY, image_temperature=0.0, image_grid=grid), [1], 1)
        history = [BOI, 30 + 1, 30 + 2, *([4, 5, 6, 7, EOL] * 2)]
        g.resync(slot, [1, *history[:slot + 1]], slot + 1)
    g.add(len(want), RequestOptions(mode=TEXT_ONLY), [1], 0)
    g.add(len(want) + 1, RequestOptions(mode=IMAGE_ONLY), [1], 0)  # forced BOI first
    slots = np.arange(len(want) + 2)
    out = g.apply(torch.randn(len(slots), V), slots)
    for row, w in zip(out[:len(want)], want, strict=True):
        assert (allowed(row) <= CODES and len(allowed(row)) == 1) if w == "code" else allowed(row) == w
    assert allowed(out[-2]) == TEXT
    assert allowed(out[-1]) == {BOI}


def test_text_rows_never_get_eol_or_size_tokens():
    g = SpanGrammar(LAYOUT, max_slots=2)
    g.add(0, RequestOptions(mode=INTERLEAVED), [1, 2], 0)
    assert allowed(g.apply(torch.randn(1, V), np.array([0]))[0]) == TEXT | {BOI}
    assert set(LAYOUT.span_token_ids()) == CODES | SIZES | {BOI, EOI, EOL}


def test_resync_places_a_slot_inside_a_row_and_after_an_eol():
    g = SpanGrammar(LAYOUT, max_slots=2)
    params = RequestOptions(mode=INTERLEAVED, image_grid=(2, 2))
    g.add(0, params, [1, BOI, 31, 31, 4, 5, EOL], 6)
    assert g.state.pos[0] == 5 and g.tail_length(0) == 3 + 2 * 3 + 1
    assert allowed(g.apply(torch.randn(1, V), np.array([0]))[0]) <= CODES
    g.add(1, params, [1, BOI, 31, 31, 4, 5, EOL, 6, 7, EOL, EOI], 10)
    assert g.state.pos[1] == -1


def test_a_grid_the_checkpoint_cannot_write_falls_back_to_native():
    g = SpanGrammar(LAYOUT, max_slots=1)
    g.add(0, RequestOptions(mode=INTERLEAVED, image_grid=(3, 4)), [1], 0)  # odd side: no size token
    assert (g.state.rows[0], g.state.cols[0]) == (NATIVE, NATIVE)
    with pytest.raises(ValueError, match="image_grid"):
        RequestOptions.from_extra_args({"modalities": ["image"], "image_grid": [0, 4]})


def test_splitter_strips_size_and_eol_tokens():
    splitter = SpanSplitter(LAYOUT, lambda ids: "t" * len(ids))
    span = [BOI, 31, 32, 4, 5, 6, 7, EOL, 8, 9, 10, 11, EOL, EOI]
    pieces = splitter.feed([1, *span[:5]], "x") + splitter.feed(span[5:], "")
    assert pieces == ["t", ImageCodes([0, 1, 2, 3, 4, 5, 6, 7], (2, 4))]
    assert splitter.feed([BOI, 31, 31, 4, EOL, EOI], "") == []  # too short for its grid: no image


def test_image_span_of_input_codes_frames_rows():
    codes = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    assert LAYOUT.image_span(codes) == [BOI, 31, 32, 4, 5, 6, 7, EOL, 8, 9, 10, 11, EOL, EOI]


def test_lumina_vocabulary_without_its_tokens_is_refused():
    vocab = {k: v for k, v in VOCAB.items() if k != "<reserved08799>"}
    with pytest.raises(CheckpointError, match="reserved08799"):
        TokenLayout.from_vocabulary_map(vocab, V, 16, [LUMINA_ARCHITECTURE])
    assert not TokenLayout.from_vocabulary_map(VOCAB, V, 16, ["ChameleonForConditionalGeneration"]).span.rows_framed


def test_sizes_follow_the_authors_crop_list():
    # Lumina-mGPT-7B-768: 24 patches a side, 576 patches; its list starts at 48x12 patches (aspect 4)
    grids = lumina_grids(24, 100)
    assert grids[0] == (24, 96) and (48, 48) in grids and all(r * c <= 576 * 4 for r, c in grids)
    assert all(max(r, c) / min(r, c) <= 4 for r, c in grids)
    sizes = LUMINA.image_sizes(LAYOUT.span, pixels_per_code=2, model_dir="/tmp/tiny")  # 2 patches of 4 px a side
    assert next(iter(sizes.grids.items())) == ("8x8", (4, 4)) and sizes.default == (4, 4)
    assert sizes.grid("16x4") == (2, 8) and sizes.grid("4x16") == (8, 2)
    with pytest.raises(ValueError, match="not a size this model writes: 'auto' or one of 8x8, .*16x4"):
        sizes.grid("8x9")
    assert target_resolution("/models/Lumina-mGPT-7B-768/", 512) == 768
    assert target_resolution("/tmp/tiny-lumina", 16) == 16


def test_chameleon_format_is_one_square():
    fmt = SpanFormat(32)
    assert CHAMELEON.image_sizes(fmt, 16, "/models/chameleon-7b").grids == {"512x512": (32, 32)}
    with pytest.raises(ValueError, match="32x32"):
        fmt.check_grid((32, 16))


@pytest.mark.parametrize("grid", [(2, 6), (6, 2), (4, 4)])
def test_the_on_device_form_allows_what_the_host_form_allows(grid):
    """Model Runner V2's path (SpanGrammar.apply_on_device: positions as device tensors, every decision a mask)
    against the host path, at every position of a Lumina-mGPT span and before and after it, beside a text-only
    row and an image-only row before its BOI."""
    g = SpanGrammar(LAYOUT, max_slots=4)
    g.add(0, RequestOptions(mode=INTERLEAVED, image_temperature=0.0, image_grid=grid), [1, 2], 0)
    g.add(1, RequestOptions(mode=TEXT_ONLY), [1], 0)
    g.add(2, RequestOptions(mode=IMAGE_ONLY, image_grid=grid), [1], 0)
    slots, tracked = np.array([1, 0, 2]), np.array([1, 2])
    g.advance(np.array([0]), np.array([BOI]))
    for _ in range(3 + grid[0] * (grid[1] + 1) + 1):
        logits = torch.randn(3, V)
        host = g.apply(logits.clone(), slots)
        device = g.apply_on_device(logits.clone(), slots, tracked, torch.from_numpy(g.state.pos[slots[tracked]]),
                                   torch.from_numpy(g.state.num_output[slots[tracked]]))
        assert torch.equal(host, device)
        g.advance(np.array([0]), np.array([min(allowed(host[1]))]))  # the one allowed, until text after EOI
