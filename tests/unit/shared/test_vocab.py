"""Codebook index <-> vocabulary id mapping, derived by name from the checkpoint."""

from __future__ import annotations

import pytest
import torch

from engine.shared.families import CHAMELEON
from engine.shared.vocab import CheckpointError, TokenLayout, code_name


def _layout(codes_first: int = 4, n: int = 20) -> TokenLayout:
    vocab = {"<s>": 0, "</s>": 1, "<eoss>": 2, "<racm3:break>": 3, "<image>": 100, "<reserved08706>": 101}
    # codes deliberately not in codebook order: index i at id codes_first + (n - 1 - i)
    vocab.update({code_name(i): codes_first + (n - 1 - i) for i in range(n)})
    return TokenLayout.from_vocabulary_map(vocab, vocab_size=128, image_seq_length=4)


def test_names_round_trip():
    assert code_name(0) == "IMGIMGAZ" and code_name(8191) == "IMGIMGIBJBZ"
    named = CHAMELEON.image_codes({code_name(i): i + 5 for i in range(0, 10000, 7)} | {"IMGIMGZ": 1, "IMGIMGxZ": 2})
    assert named == {i: i + 5 for i in range(0, 10000, 7)}


def test_mapping_both_ways():
    layout = _layout()
    codes = torch.tensor([[0, 5], [19, 3]])
    ids = layout.codes_to_ids(codes)
    assert ids.tolist() == [[23, 18], [4, 20]]
    assert torch.equal(layout.ids_to_codes(ids), codes)
    assert layout.ids_to_codes(torch.tensor([0, 2, 3, 100])).tolist() == [-1, -1, -1, -1]


def test_span_and_forbidden():
    layout = _layout()
    span = layout.image_span(torch.tensor([1, 2, 3, 4]))
    assert span[0] == layout.boi and span[-1] == layout.eoi and len(span) == 6
    forbidden = set(layout.span_token_ids())
    assert forbidden == set(range(4, 24)) | {layout.boi, layout.eoi}


def test_missing_special_names_a_clear_error():
    with pytest.raises(CheckpointError, match="<racm3:break>"):
        TokenLayout.from_vocabulary_map({"<eoss>": 1, "<image>": 2, "<reserved08706>": 3, "IMGIMGAZ": 4}, 10, 1)
    with pytest.raises(CheckpointError, match="contiguous"):
        TokenLayout.from_vocabulary_map({"<eoss>": 1, "<racm3:break>": 0, "<image>": 2, "<reserved08706>": 3,
                                         "IMGIMGBZ": 4}, 10, 1)
