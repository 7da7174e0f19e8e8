"""Speculative Jacobi decoding's exactness (``engine/worker/jacobi.py``) with no engine: ``jacobi_loop.py`` plays
vLLM around the real V1 span processor on fake models. On an input-independent model SJD's codes fit the known
p in far fewer passes; on a Markov model over the codes they match SJD off (``jacobi_window`` 1), greedy codes
equal. Wrong acceptance rules, injected through the uniforms ``verify`` reads, fail the same checks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from jacobi_loop import JacobiLoop, Request
from jacobi_reference import chi_square_p_value, regularized_upper_gamma, sampled_distribution
from runner_pair import chameleon_checkpoint
from vllm import SamplingParams

from engine.shared.jacobi import MAX_WINDOW
from engine.worker import jacobi

V, IMAGE_CODES = 16, 256  # vocabulary; a 16 x 16 image
CODES, EOI, BOI = list(range(4, 12)), 12, 13  # chameleon_checkpoint's layout
INDEPENDENT = dict(image_temperature=0.9, image_top_k=6, image_top_p=0.9)
MIN_PAIRS = 10  # per (previous token, code) cell of both samples together, else pooled with the row's rare cells


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return chameleon_checkpoint(tmp_path_factory.mktemp("sjd"), V, IMAGE_CODES)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: a step's tensors are tiny, and two threads on a shared box wait on each other for
    milliseconds. Each processor built here installs its windows as this process's: restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jacobi, "_active", jacobi.active())
        yield
    torch.set_num_threads(threads)


def image_requests(count: int, seed: int, window: int, **image: float) -> list[SamplingParams]:
    """Image-only requests, each with its own seed (its own uniforms)."""
    return [SamplingParams(seed=seed + i, extra_args={"modalities": ["image"], "jacobi_window": window, **image})
            for i in range(count)]


def codes_of(request: Request) -> list[int]:
    """The image's codes; its output must be BOI, one image's codes, EOI."""
    out = request.output
    assert out[0] == BOI and out[-1] == EOI and len(out) == IMAGE_CODES + 2, out
    return out[1:-1]


def independent_table() -> torch.Tensor:
    """Every row's logits the same: every position draws from one known p."""
    return (2.0 * torch.randn(V, generator=torch.Generator().manual_seed(0))).expand(V, V)


def markov_table() -> torch.Tensor:
    """Logits of the token after each token: about 3 of the 8 codes favoured (e^2) after each, a different few."""
    gen = torch.Generator().manual_seed(1)
    return 2.0 * (torch.rand(V, V, generator=gen) < 3 / 8) + 0.3 * torch.randn(V, V, generator=gen)


def independent_check(model_dir: str) -> tuple[float, list[Request]]:
    """The chi-square p-value of SJD's codes against the known p (codes of one image are independent draws of
    it), and the requests; three rows sharing a budget that gives each its whole window."""
    loop = JacobiLoop(model_dir, independent_table(), EOI, slots=3, budget=3 * (MAX_WINDOW - 1))
    requests = loop.run(image_requests(8, seed=100, window=MAX_WINDOW, **INDEPENDENT))
    codes = np.array([c for r in requests for c in codes_of(r)]) - CODES[0]
    p = sampled_distribution(independent_table()[0, CODES].numpy(), INDEPENDENT["image_temperature"],
                             INDEPENDENT["image_top_k"], INDEPENDENT["image_top_p"])
    return chi_square_p_value(np.bincount(codes, minlength=len(CODES)), p), requests


def transitions(requests: list[Request]) -> np.ndarray:
    """Counts of (previous token, code) in the requests' images; rows: the codes, then BOI."""
    counts = np.zeros((len(CODES) + 1, len(CODES)), dtype=np.int64)
    for request in requests:
        span = np.array([BOI, *codes_of(request)]) - CODES[0]
        np.add.at(counts, (np.minimum(span[:-1], len(CODES)), span[1:]), 1)
    return counts


def markov_p_value(model_dir: str) -> float:
    """SJD's images against SJD off's (``jacobi_window`` 1, one code per step), 32 each, alternating in one batch
    of four rows that share a budget of 30 drafts; vLLM's token budget trims drafts at random."""
    loop = JacobiLoop(model_dir, markov_table(), EOI, slots=4, budget=30, trim=np.random.default_rng(0))
    on = image_requests(32, seed=100, window=MAX_WINDOW, image_temperature=1.0)
    off = image_requests(32, seed=200, window=1, image_temperature=1.0)
    requests = loop.run([r for pair in zip(on, off) for r in pair])
    return homogeneity_p_value(transitions(requests[0::2]), transitions(requests[1::2]))


def homogeneity_p_value(a: np.ndarray, b: np.ndarray) -> float:
    """Whether two samples of a Markov chain share its transitions (Anderson and Goodman's test): after each
    previous token (a row) the next codes are independent draws, so the rows' two-sample chi-square statistics
    and degrees of freedom add up."""
    stat, dof = 0.0, 0
    for row_a, row_b in zip(a.astype(np.float64), b.astype(np.float64)):
        rare = row_a + row_b < MIN_PAIRS
        row_a = np.append(row_a[~rare], row_a[rare].sum())
        row_b = np.append(row_b[~rare], row_b[rare].sum())
        total = row_a + row_b
        row_a, row_b, total = row_a[total > 0], row_b[total > 0], total[total > 0]
        if len(total) < 2:
            continue
        for row in (row_a, row_b):
            expected = total * row.sum() / total.sum()
            stat += float(((row - expected) ** 2 / expected).sum())
        dof += len(total) - 1
    return regularized_upper_gamma(dof / 2, stat / 2)


def greedy_outputs(model_dir: str, window: int) -> list[list[int]]:
    """Three greedy images of the Markov model; their seeds still pick the first windows' random drafts."""
    loop = JacobiLoop(model_dir, markov_table(), EOI, slots=3, budget=20, trim=np.random.default_rng(1))
    return [r.output for r in loop.run(image_requests(3, seed=7, window=window, image_temperature=0.0))]


def accept_every_draft(monkeypatch) -> None:
    """The acceptance test ``u q(x) < p(x)`` always passes: its uniforms are -1."""
    uniforms = jacobi._uniforms
    monkeypatch.setattr(jacobi, "_uniforms", lambda seeds, index, role: np.full(len(index), -1.0)
                        if role == jacobi.ACCEPT else uniforms(seeds, index, role))


def accept_with_the_redraw_uniform(monkeypatch) -> None:
    """A redrawn draft is tested with the uniform it was drawn with: the test is no longer independent of it."""
    uniforms = jacobi._uniforms
    monkeypatch.setattr(jacobi, "_uniforms", lambda seeds, index, role:
                        uniforms(seeds, index, jacobi.REDRAW if role == jacobi.ACCEPT else role))


def test_input_independent_codes_fit_p_in_eight_times_fewer_passes(model_dir):
    p_value, requests = independent_check(model_dir)
    assert p_value > 0.01
    assert all(8 * (r.steps - 1) <= IMAGE_CODES for r in requests)  # the passes after the one that writes BOI


def test_markov_codes_match_sjd_off(model_dir):
    assert markov_p_value(model_dir) > 0.01


def test_greedy_codes_equal_sjd_off(model_dir):
    assert greedy_outputs(model_dir, MAX_WINDOW) == greedy_outputs(model_dir, 1)


def test_accepting_every_draft_fails_every_check(model_dir, monkeypatch):
    accept_every_draft(monkeypatch)
    assert independent_check(model_dir)[0] < 0.01
    assert markov_p_value(model_dir) < 0.01
    assert greedy_outputs(model_dir, MAX_WINDOW) != greedy_outputs(model_dir, 1)


def test_accepting_with_the_redraw_uniform_fails_the_markov_check(model_dir, monkeypatch):
    """On the input-independent model a redraw's q is p, kept whatever the uniform: only the Markov check sees it;
    greedy rows keep exactly the argmax whatever the uniform."""
    accept_with_the_redraw_uniform(monkeypatch)
    assert markov_p_value(model_dir) < 0.01


def test_drawing_a_rejection_from_p_fails_the_markov_check(model_dir, monkeypatch):
    """The code drawn where a draft is not kept must come from norm(max(p - q, 0)), not p: p over-weights the
    drafts' likely codes. (On the input-independent model q is p after the first window, so only the Markov
    check sees it; greedy rows reject only to the argmax either way.)"""
    monkeypatch.setattr(jacobi, "residual_of", lambda p, q: p)
    assert markov_p_value(model_dir) < 0.01


def test_the_budget_is_shared_and_a_full_batch_drafts_nothing():
    """Water-filling: rows wanting less leave the rest to the others, at one cap whatever the rows' order;
    where an equal share would be under MIN_DRAFTS a row, no row drafts (a full batch decodes one code per
    step)."""
    from engine.worker.jacobi import MIN_DRAFTS, share_budget

    assert share_budget(np.array([15, 2, 0]), 15).tolist() == [13, 2, 0]
    assert share_budget(np.array([0, 2, 15]), 15).tolist() == [0, 2, 13]
    assert share_budget(np.array([15, 15]), 15).tolist() == [7, 7]
    assert share_budget(np.array([4, 15, 9, 15]), 30).tolist() == [4, 8, 8, 8]  # 2 left: no order to give them by
    assert share_budget(np.array([4, 15, 9, 15]), 60).tolist() == [4, 15, 9, 15]
    assert share_budget(np.array([15] * 5), 15).tolist() == [MIN_DRAFTS] * 5
    assert not share_budget(np.array([15] * 6), 15).any()
    assert not share_budget(np.array([15] * 32), 96 - 1).any()
    assert share_budget(np.array([15] * 32), 96).tolist() == [3] * 32
