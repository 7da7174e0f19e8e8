"""Guidance in the span processor (``engine/worker/guidance.py``, through the V1 adapter): a guided row beside its
companion draws its code from ``uncond + scale * (cond - uncond)``, greedy and sampled, and its companion writes
the same code. Each check must fail for the wrong combinations: the row's own logits, or the companion's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from runner_pair import chameleon_checkpoint, companion, guided, v1_config
from vllm.v1.sample.logits_processor import BatchUpdate

from engine.worker.guidance import Guidance
from engine.worker.runner_v1 import ChameleonSpanLogitsProcessorV1

V, BOI, SCALE = 40, 13, 3.0
CODES = list(range(4, 12))
# The guided combination's best code (6.0 at code 0) is neither the row's (3.0 at code 7) nor the companion's.
COND = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, 3.0])
UNCOND = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.5])
WRONG = {"the row's own": lambda self, cond, uncond, slots, sampling: cond,
         "the companion's": lambda self, cond, uncond, slots, sampling: uncond.to(cond.dtype)}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return chameleon_checkpoint(tmp_path_factory.mktemp("fake_ckpt"), V, 16)


def draws(model_dir: str, pairs: int, temperature: float) -> np.ndarray:
    """The codes that ``pairs`` guided rows (seeds 0..pairs-1, one BOI written) write in one step, the rows' logits
    :data:`COND` and their companions' :data:`UNCOND` over the codes (no top-k, no top-p); each companion writes
    its row's code."""
    processor = ChameleonSpanLogitsProcessorV1(v1_config(model_dir, 2 * pairs), torch.device("cpu"), False)
    added = []
    for i in range(pairs):
        params = guided(f"g{i}", ["image"], SCALE, seed=i, image_temperature=temperature, image_top_k=0,
                        image_top_p=1.0)
        added.append((2 * i, params, [1, 2], [BOI]))
        added.append((2 * i + 1, companion(f"g{i}"), [1, 15], []))
    processor.update_state(BatchUpdate(batch_size=2 * pairs, removed=[], moved=[], added=added))
    logits = torch.full((2 * pairs, V), -5.0)
    logits[0::2, CODES] = COND
    logits[1::2, CODES] = UNCOND
    out = processor.apply(logits)
    assert torch.equal(torch.isfinite(out).sum(1), torch.ones(2 * pairs, dtype=torch.long))
    picks = out.argmax(1).numpy()
    assert np.array_equal(picks[0::2], picks[1::2])
    return picks[0::2]


@pytest.fixture(params=[None, *WRONG])
def wrong(request, monkeypatch) -> str | None:
    """None: guidance as written; else the name of a wrong combination, patched in for the test."""
    if request.param:
        monkeypatch.setattr(Guidance, "guided", WRONG[request.param])
    return request.param


def test_a_greedy_guided_code_is_the_argmax_of_the_combination(model_dir, wrong):
    want = CODES[int((UNCOND + SCALE * (COND - UNCOND)).argmax())]
    assert (list(draws(model_dir, 2, temperature=0.0)) == [want] * 2) == (wrong is None)


def test_sampled_guided_codes_follow_the_combinations_distribution(model_dir, wrong):
    """4,000 draws at temperature 1 against softmax(uncond + scale * (cond - uncond)): within 0.02 each."""
    rows = draws(model_dir, 4000, temperature=1.0)
    got = torch.tensor(np.bincount(rows - CODES[0], minlength=len(CODES)) / len(rows), dtype=torch.float32)
    want = (UNCOND + SCALE * (COND - UNCOND)).softmax(0)
    assert torch.allclose(got, want, atol=0.02) == (wrong is None), (got, want)
