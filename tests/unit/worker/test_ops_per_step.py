"""One step of either runner's adapter dispatches as many torch operations for 128 rows as for 4 rows of the
same mix (``dispatch_probes.OpCount`` on CPU tensors): each operation is a kernel launch on an accelerator, so
no per-row Python loop may launch work. The counts are recorded in bench/RESULTS.md."""

from __future__ import annotations

import random

import pytest
from dispatch_probes import OpCount
from runner_pair import Pair, chameleon_checkpoint, companion, guided, sp
from v2_runner import install

from engine.worker.nucleus import _draw_tensor

V, BOI, EOI = 40, 13, 12
CODES = list(range(4, 12))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return chameleon_checkpoint(tmp_path_factory.mktemp("fake_ckpt"), V, 16)


MIX = (  # (params of the request in row i, its output so far): one row of each, over and over
    lambda i: (sp(["text"], seed=i), []),
    lambda i: (sp(["text", "image"], seed=i, image_temperature=1.0, image_top_p=0.8), [16, BOI, CODES[0]]),
    lambda i: (sp(["image"], seed=i, image_temperature=1.0, image_top_k=3, logit_bias={CODES[0]: 1.0}), [BOI]),
    lambda i: (guided(f"r{i}", ["image"], 3.0, uncond=[1, 15], seed=i, image_temperature=0.0,
                      image_keep=[CODES[1], -1] * 8), [BOI]),
    lambda i: (companion(f"r{i - 1}"), [BOI]),  # the guided row's, just before
)


def ops_per_step(model_dir: str, monkeypatch: pytest.MonkeyPatch, rows: int, steps: int = 3) -> list[tuple[int, int]]:
    """(V1's, V2's) operations in each of ``steps`` steps of ``rows`` rows of :data:`MIX`."""
    install(monkeypatch)
    pair = Pair(model_dir, monkeypatch, V, slots=rows)
    for grammar in (pair.v1.grammar, pair.v2.processor.grammar):
        grammar.sampler._draw_nucleus = _draw_tensor  # the accelerator's form
    counts = (OpCount(), OpCount())
    pair.v1.apply = counts[0].during(pair.v1.apply)
    pair.v2.processor.apply = counts[1].during(pair.v2.processor.apply)
    for row in range(rows):
        params, output = MIX[row % len(MIX)](row)
        pair.add(f"r{row}", [1, 2], params, output=output)
    per_step = []
    rng = random.Random(0)
    for _ in range(steps):
        before = [sum(c.ops.values()) for c in counts]
        pair.step(rng)
        per_step.append(tuple(sum(c.ops.values()) - b for c, b in zip(counts, before, strict=True)))
    return per_step


def test_ops_per_step_do_not_grow_with_rows(model_dir, monkeypatch):
    few, many = ops_per_step(model_dir, monkeypatch, 5), ops_per_step(model_dir, monkeypatch, 130)
    print(f"ops per step (V1, V2): 5 rows {few}, 130 rows {many}")
    assert few == many
