"""An input-independent tiny checkpoint: one next-code distribution everywhere, known, and far from uniform, so
that speculative Jacobi decoding's tests can check sampled codes against it (``tests/jacobi_reference.py``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from jacobi_reference import chi_square_p_value, code_distribution, regularized_upper_gamma, sampled_distribution
from safetensors.torch import load_file

from engine.offline.tiny import TinySpec, make_tiny
from engine.shared.vocab import TokenLayout
from engine.worker.nucleus import draw_nucleus

SPEC = TinySpec(grid=8, codebook_size=64, input_independent=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("independent"), SPEC)


@torch.inference_mode()
def test_logits_are_the_same_at_every_position_of_any_prompt(tiny):
    from transformers import ChameleonForConditionalGeneration

    model = ChameleonForConditionalGeneration.from_pretrained(tiny, torch_dtype=torch.float32).eval()
    layout = TokenLayout.from_checkpoint(tiny)
    prompts = ([model.config.bos_token_id, 300, 301, 302, layout.boi],
               [model.config.bos_token_id, 310, 7, layout.boi, *layout.code_to_id[:12], layout.eoi, 400, 401])
    # The raw head: transformers' forward sets image-code logits to the float minimum.
    logits = [model.lm_head(model.model(input_ids=torch.tensor([ids])).last_hidden_state[0]) for ids in prompts]
    first = logits[0][0]
    assert first.std() > 0.1  # not a degenerate model
    for rows in logits:
        torch.testing.assert_close(rows, first.expand_as(rows), atol=1e-5, rtol=1e-5)


def test_code_distribution_is_far_from_uniform(tiny):
    p = code_distribution(tiny)
    assert p.shape == (SPEC.codebook_size,) and math.isclose(p.sum(), 1.0)
    assert 0.05 <= p.max() <= 0.3 and p.min() < 0.5 / SPEC.codebook_size


def test_same_spec_same_bytes_and_only_the_embedding_differs(tiny, tmp_path):
    again = make_tiny(tmp_path / "again", SPEC)
    assert sorted(f.name for f in tiny.iterdir()) == sorted(f.name for f in again.iterdir())
    assert all(f.read_bytes() == (again / f.name).read_bytes() for f in tiny.iterdir() if f.is_file())
    mine = load_file(tiny / "model.safetensors")
    normal = load_file(make_tiny(tmp_path / "normal", TinySpec(grid=8, codebook_size=64)) / "model.safetensors")
    assert {k for k in mine if not torch.equal(mine[k], normal[k])} == {"model.embed_tokens.weight"}
    assert (mine["model.embed_tokens.weight"] == mine["model.embed_tokens.weight"][0]).all()


def test_emu3_refuses_the_flag():
    with pytest.raises(ValueError, match="input_independent"):
        TinySpec(family="emu3", input_independent=True)


def test_top_k_and_top_p_match_the_definitions():
    p = np.array([0.3, 0.3, 0.2, 0.1, 0.1])
    logits = np.log(p)
    # Codes 0 and 1: nothing strictly likelier; code 2: 0.6 likelier; codes 3 and 4: 0.8 likelier.
    nucleus = {0.5: [1, 1, 0, 0, 0], 0.65: [1, 1, 1, 0, 0], 0.79: [1, 1, 1, 0, 0], 0.81: [1, 1, 1, 1, 1]}
    for top_p, kept in nucleus.items():
        want = p * np.array(kept)
        np.testing.assert_allclose(sampled_distribution(logits, top_p=top_p), want / want.sum())
    np.testing.assert_allclose(sampled_distribution(logits, top_k=3), [0.375, 0.375, 0.25, 0, 0])
    np.testing.assert_allclose(sampled_distribution(logits, top_k=4), p)  # ties with the 4th stay
    np.testing.assert_allclose(sampled_distribution(logits, temperature=0.5), p**2 / (p**2).sum())


def test_the_reference_agrees_with_the_project_sampler():
    p = np.array([0.3, 0.3, 0.2, 0.1, 0.05, 0.05], dtype=np.float32)
    draws = 20_000
    probs = torch.from_numpy(np.tile(p, (draws, 1)))
    uniforms = torch.rand(draws, 4, generator=torch.Generator().manual_seed(0))
    codes = draw_nucleus(probs, uniforms, np.full(draws, 0.85, dtype=np.float32)).numpy()
    counts = np.bincount(codes, minlength=p.size)
    want = sampled_distribution(np.log(p), top_p=0.85)
    assert counts[4:].sum() == 0 and chi_square_p_value(counts, want) > 1e-3
    assert chi_square_p_value(counts, sampled_distribution(np.log(p), top_p=1.0)) == 0.0


def test_chi_square():
    for x in (0.1, 1.0, 3.0, 20.0):  # closed forms: 2 and 1 degrees of freedom
        assert math.isclose(regularized_upper_gamma(1.0, x / 2), math.exp(-x / 2), rel_tol=1e-10)
        assert math.isclose(regularized_upper_gamma(0.5, x / 2), math.erfc(math.sqrt(x / 2)), rel_tol=1e-10)
    p = np.array([0.5, 0.3, 0.19, 0.01])
    assert chi_square_p_value(np.array([500, 300, 190, 10]), p) > 0.99
    assert chi_square_p_value(np.array([400, 400, 190, 10]), p) < 1e-6
    # The 1% code expects 1 count of 100: pooled with the next rarest, it is not a bin of its own.
    assert chi_square_p_value(np.array([50, 30, 16, 4]), p) > 0.05
