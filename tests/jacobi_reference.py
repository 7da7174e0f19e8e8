"""The known code distribution of an input-independent tiny checkpoint (``TinySpec(input_independent=True)``) and
a chi-square test of sampled codes against it, for speculative Jacobi decoding's tests: on such a checkpoint every
position draws from one fixed distribution, so generated codes' counts must fit it. The distribution comes from
transformers' Chameleon, and the sampling rules are written here from their contract in
``engine/worker/code_sampler.py`` and ``engine/worker/nucleus.py``, not imported from them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from engine.shared.vocab import TokenLayout

_MIN_EXPECTED = 5.0  # chi-square's usual rule: bins expecting fewer counts are pooled


@torch.inference_mode()
def code_distribution(model_dir: str | Path, temperature: float = 1.0, top_k: int = 0,
                      top_p: float = 1.0) -> np.ndarray:
    """Probability of each image code (codebook order: ``TokenLayout.code_to_id``) at any position of an
    input-independent checkpoint, after the image sampling settings (float64, sums to 1)."""
    from transformers import ChameleonForConditionalGeneration

    layout = TokenLayout.from_checkpoint(model_dir)
    model = ChameleonForConditionalGeneration.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    prompt = torch.tensor([[model.config.bos_token_id, layout.boi]])
    # The raw head: transformers' forward sets image-code logits to the float minimum.
    logits = model.lm_head(model.model(input_ids=prompt).last_hidden_state[0, -1])
    return sampled_distribution(logits[layout.code_ids()].numpy(), temperature, top_k, top_p)


def sampled_distribution(logits: np.ndarray, temperature: float = 1.0, top_k: int = 0,
                         top_p: float = 1.0) -> np.ndarray:
    """The distribution the code sampler draws from for one row of code ``logits`` (``temperature`` > 0).

    Top-k keeps every code at least as likely as the k-th (ties stay; 0 = off); top-p keeps a code iff the
    total probability of codes strictly likelier than it is below ``top_p`` (1 = off); then renormalizes.
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0 (temperature 0 is greedy: a single code)")
    x = np.asarray(logits, dtype=np.float64) / temperature
    if 0 < top_k < x.size:
        x = np.where(x < np.sort(x)[-top_k], -np.inf, x)
    p = np.exp(x - x.max())
    p /= p.sum()
    if top_p < 1:
        above = np.array([p[p > q].sum() for q in p])
        p = np.where(above < top_p, p, 0.0)
        p /= p.sum()
    return p


def chi_square_p_value(counts: np.ndarray, p: np.ndarray) -> float:
    """P-value of Pearson's chi-square test of observed ``counts`` per code against probabilities ``p``.

    Codes expecting fewer than 5 counts are pooled into one bin (with the next rarest codes, until it expects
    5). A count on a code of probability 0 cannot happen under ``p``: the p-value is then 0.
    """
    counts, p = np.asarray(counts, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if counts.shape != p.shape:
        raise ValueError(f"counts {counts.shape} and p {p.shape} differ in shape")
    if counts[p == 0].any():
        return 0.0
    expected = counts.sum() * p / p.sum()
    order = np.argsort(expected, kind="stable")
    pool = 0
    if expected[order[0]] < _MIN_EXPECTED:  # the rarest codes: all under 5, and more until they expect 5
        reach = int(np.searchsorted(np.cumsum(expected[order]), _MIN_EXPECTED)) + 1
        pool = min(max(reach, int((expected < _MIN_EXPECTED).sum())), expected.size)
    observed, wanted = counts[order[pool:]], expected[order[pool:]]
    if pool:
        observed = np.append(observed, counts[order[:pool]].sum())
        wanted = np.append(wanted, expected[order[:pool]].sum())
    if wanted.size < 2:
        raise ValueError("too few counts for a chi-square test: fewer than two bins expect 5")
    stat = float(((observed - wanted) ** 2 / wanted).sum())
    return regularized_upper_gamma((wanted.size - 1) / 2, stat / 2)


def regularized_upper_gamma(a: float, x: float) -> float:
    """Q(a, x) = Γ(a, x) / Γ(a), so that chi-square with k degrees of freedom has survival Q(k/2, x/2). A series
    below x = a + 1, Lentz's continued fraction above (Numerical Recipes' ``gammq``); scipy is not installed."""
    if x <= 0:
        return 1.0
    log_front = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:  # P(a, x) by its series
        term = total = 1.0 / a
        n = a
        while abs(term) > abs(total) * 1e-15:
            n += 1
            term *= x / n
            total += term
        return max(0.0, 1.0 - total * math.exp(log_front))
    tiny = 1e-300
    b = x + 1 - a
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return math.exp(log_front) * h


def two_sample_p_value(a: np.ndarray, b: np.ndarray, permutations: int = 2000, seed: int = 0) -> float:
    """Whether two sets of images (rows: one image's code counts) draw codes from one distribution: the chi-square
    homogeneity statistic of their pooled histograms, against its value when the images are shuffled between the
    sets. Codes within an image are not independent (one image's codes repeat, follow each other), images are:
    a chi-square table over pooled codes would reject exact samplers; shuffling whole images does not."""
    images = np.concatenate([a, b]).astype(np.float64)
    labels = np.zeros(len(images), dtype=bool)
    labels[len(a):] = True
    gen = np.random.default_rng(seed)
    shuffled = np.stack([labels, *(gen.permutation(labels) for _ in range(permutations))])
    first, second = (~shuffled).astype(np.float64) @ images, shuffled.astype(np.float64) @ images
    total = first + second
    used = total[0] > 0
    expected = total[:, used] / total[:, used].sum(axis=1, keepdims=True)
    stats = (((first[:, used] - expected * first.sum(axis=1, keepdims=True)) ** 2
              + (second[:, used] - expected * second.sum(axis=1, keepdims=True)) ** 2)
             / np.maximum(total[:, used], 1)).sum(axis=1)
    return float((stats[1:] >= stats[0]).mean())
