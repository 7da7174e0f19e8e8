"""The compiled host draw against the tensor rounds, on the same rows and uniforms, at Chameleon's width."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from engine.worker.nucleus import _draw_host, _draw_tensor, draw_nucleus

WIDTH = 8192  # Chameleon's codebook


def _rows(count: int) -> tuple[torch.Tensor, np.ndarray]:
    """Softmax rows from flat to peaked, some with masked codes (top-k), with top-p from tiny to off."""
    gen = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.3, 1.0, 3.0, 8.0]).repeat(count // 4).unsqueeze(1)
    logits = torch.randn(count, WIDTH, generator=gen) * scale
    logits[::5, WIDTH // 2 :] = float("-inf")
    top_p = np.array([1.0, 0.9, 0.5, 0.05, 0.999], dtype=np.float32)[np.arange(count) % 5]
    return logits.softmax(dim=1), top_p


@pytest.mark.parametrize("rounds", [16, 0])  # 0: every row draws from the sorted nucleus
def test_host_and_tensor_forms_draw_the_same_codes(rounds):
    probs, top_p = _rows(800)
    uniforms = torch.rand(len(probs), rounds + 1, generator=torch.Generator().manual_seed(1))
    host = torch.from_numpy(_draw_host(probs.numpy(), uniforms.numpy(), top_p))
    tensor = _draw_tensor(probs.clone(), uniforms, top_p)
    # the forms sum in different orders: a draw may differ only where a uniform lands within rounding of a boundary
    assert (host == tensor).float().mean() >= 0.995, (host != tensor).sum()
    picked = probs.gather(1, host.unsqueeze(1)).squeeze(1)
    above = torch.where(probs > picked.unsqueeze(1), probs, 0.0).sum(dim=1)
    assert (picked > 0).all()
    assert (above < torch.from_numpy(top_p) + 1e-5).all()  # inside each row's nucleus


def test_rows_without_a_finite_logit_draw_uniformly_in_both_forms():
    probs = torch.tensor([[float("-inf")] * 8, [0.0, float("nan"), *[0.0] * 6]]).softmax(dim=1)
    uniforms = torch.tensor([[0.3, 0.9], [0.99, 0.1]])
    top_p = np.ones(2, dtype=np.float32)
    assert draw_nucleus(probs.clone(), uniforms, top_p).tolist() == [2, 7]
    assert _draw_tensor(probs.clone(), uniforms, top_p).tolist() == [2, 7]


def test_the_processor_modules_leave_numba_unimported():
    """vLLM 0.32's CPU worker scans every module namespace as it starts and fails on llvmlite's; the processor
    class is unpickled before that scan, the processor itself built after it."""
    code = "import sys, engine.worker.runner_v1, engine.worker.runner_v2; assert 'llvmlite' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_draw_compiles_where_numba_can_cache_nothing():
    """As on a read-only filesystem: no cache locator applies (forced here), and numba refuses ``cache=True``."""
    code = ("import numpy as np, torch; from engine.worker.nucleus import draw_nucleus; "
            "print(draw_nucleus(torch.tensor([[0.0, 1.0]]), torch.full((1, 2), 0.5), np.ones(1, np.float32)).item())")
    env = {**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "IPythonCacheLocator"}  # applies to notebook cells only
    out = subprocess.run([sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "1"


def test_host_nucleus_cut_equals_the_sorted_one():
    """SJD's explicit nucleus (engine/worker/jacobi.py code_probs): the compiled bucket cut keeps exactly the codes
    the sorted cut keeps (ties at the edge included), renormalized."""
    from engine.worker.nucleus import nucleus_host

    probs, top_p = _rows(200)
    probs, top_p = probs[top_p < 1], top_p[top_p < 1]  # top-p 1 keeps every row whole
    probs[3, :40] = probs[3, 40]  # a run of equal values, somewhere in its row's order
    host = probs.clone()
    nucleus_host(host.numpy(), top_p)
    desc = probs.double().sort(dim=1, descending=True).values  # sums in float64, as the compiled cut's
    limit = torch.from_numpy(top_p).double().unsqueeze(1) * desc.sum(dim=1, keepdim=True)
    kept = (desc.cumsum(dim=1) - desc < limit).sum(dim=1, keepdim=True)
    cut = probs.masked_fill(probs < desc.gather(1, kept - 1).float(), 0.0)
    assert torch.equal(host > 0, cut > 0)
    torch.testing.assert_close(host, cut / cut.sum(dim=1, keepdim=True))
