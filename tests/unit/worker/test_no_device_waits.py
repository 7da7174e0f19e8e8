"""Neither runner's adapter makes the host wait for the device in a step: probed at torch's dispatcher on CPU
tensors (``dispatch_probes.SyncProbe``), over batches holding everything a step can hold (text, interleaved and
image-only rows, top-k/top-p and greedy draws, logit bias, a resumed span, a guided row beside its companion
and a masked edit), in Chameleon's, Lumina-mGPT's and Emu3's span layouts."""

from __future__ import annotations

import random

import pytest
import torch
from dispatch_probes import SyncProbe
from runner_pair import PENALTIES, Pair, companion, guided, sp
from v2_runner import install

from engine.shared.families.emu3 import EMU3_ARCHITECTURE
from engine.shared.families.lumina import LUMINA_ARCHITECTURE, size_token_name
from engine.shared.vocab import BOI_NAME, EOI_NAME, IMAGE_PLACEHOLDER_NAME, SEP_NAME, TokenLayout, code_name
from engine.worker.nucleus import _draw_tensor

_CODES = {code_name(i): 4 + i for i in range(8)}
_MARKERS = {EOI_NAME: 12, BOI_NAME: 13, IMAGE_PLACEHOLDER_NAME: 14, SEP_NAME: 15}
LAYOUTS = {  # 8 codes at ids 4-11, EOI 12, BOI 13 in each; native images of 4 (Chameleon) or 4 x 4 codes
    "chameleon": TokenLayout.from_vocabulary_map({**_CODES, **_MARKERS}, 40, 4, None),
    "lumina": TokenLayout.from_vocabulary_map(
        {**_CODES, **_MARKERS, "<reserved08799>": 20, **{size_token_name(n): 30 + n for n in range(5)}}, 48, 16,
        [LUMINA_ARCHITECTURE]),
    "emu3": TokenLayout.from_vocabulary_map(
        {**{f"<|visual token {i:06d}|>": 4 + i for i in range(8)}, "<|image start|>": 13, "<|image end|>": 12,
         "<image>": 14, "<|extra_204|>": 15, "<|extra_200|>": 20, "<|extra_201|>": 21, "<|image token|>": 22,
         "*": 50, **{str(d): 40 + d for d in range(10)}}, 64, 16, [EMU3_ARCHITECTURE]),
}


def full_batch(family: str, monkeypatch: pytest.MonkeyPatch) -> Pair:
    """Both adapters over ``family``'s layout, with one request of every kind a step can hold, each row drawing
    with the accelerator's form of the nucleus draw."""
    layout = LAYOUTS[family]
    monkeypatch.setattr(TokenLayout, "from_checkpoint", classmethod(lambda cls, model_dir: layout))
    install(monkeypatch)
    pair = Pair(family, monkeypatch, layout.vocab_size)
    for grammar in (pair.v1.grammar, pair.v2.processor.grammar):
        grammar.sampler._draw_nucleus = _draw_tensor
    code, cells = layout.code_to_id, layout.span.native_grid ** 2
    pair.add("text", [1, 2], sp(["text"], **PENALTIES))
    pair.add("mixed", [3, 16], sp(["text", "image"], image_temperature=1.0, image_top_p=0.8))
    pair.add("image", [1], sp(["image"], image_temperature=1.0, image_top_k=3, logit_bias={code[0]: 1.0}))
    pair.add("greedy", [2], sp(["image"], image_temperature=0.0), output=[layout.boi])
    pair.add("guided", [1, 2, 3], guided("guided", ["image"], 3.0, uncond=[1, 15], image_temperature=1.0))
    pair.add("guided~u", [1, 15], companion("guided"))
    pair.add("edit", [3], sp(["image"], image_temperature=1.0, image_keep=[code[1], -1] * (cells // 2)))
    return pair


@pytest.mark.parametrize("family", list(LAYOUTS))
def test_no_step_waits_for_the_device(family, monkeypatch):
    """Every step of a whole image on both adapters."""
    pair = full_batch(family, monkeypatch)
    probe = SyncProbe()
    pair.v1.apply = probe.during(pair.v1.apply)
    pair.v2.processor.apply = probe.during(pair.v2.processor.apply)
    rng = random.Random(5)
    span = LAYOUTS[family].span.span_length((LAYOUTS[family].span.native_grid,) * 2)
    for _ in range(span + 2):
        pair.step(rng)
    assert pair.output["image"][span] == LAYOUTS[family].eoi and pair.output["edit"][span] == LAYOUTS[family].eoi
    assert dict(probe.waits) == {}


def _probed(fn) -> set[str]:
    probe = SyncProbe()
    probe.during(fn)()
    return {site.split(" at ")[0] for site in probe.waits}


@pytest.mark.parametrize(("kind", "op"), [
    ("a value read back", lambda t, i, m: t.sum().item()),
    ("a value read back", lambda t, i, m: bool(t[0, 0] > 0)),
    ("a host read (tolist)", lambda t, i, m: i.tolist()),
    ("a host read (cpu)", lambda t, i, m: t.cpu()),
    ("a host read (numpy)", lambda t, i, m: i.numpy()),
    ("a blocking copy", lambda t, i, m: t.to("cpu")),
    ("nonzero", lambda t, i, m: torch.nonzero(m)),
    ("nonzero", lambda t, i, m: torch.where(m)),
    ("a boolean-mask index", lambda t, i, m: t[m]),
    ("repeat_interleave", lambda t, i, m: torch.repeat_interleave(i, i)),
    ("index_put_ of a host value", lambda t, i, m: t.__setitem__((i, 3), 0.0)),
    ("index_put_ of a host value", lambda t, i, m: t.__setitem__((slice(None), i), float("-inf"))),
    ("masked_fill_ of a host value", lambda t, i, m: t[:, 0].masked_fill_(m, torch.tensor(1.0))),
])
def test_the_probe_sees_each_kind_of_wait(kind, op):
    t, i, m = torch.randn(4, 5), torch.tensor([0, 2]), torch.tensor([True, False, True, False])
    assert [k for k in _probed(lambda: op(t, i, m)) if k.startswith(kind)], kind


@pytest.mark.parametrize("op", [
    lambda t, i, m: t.to(torch.float64),  # a dtype cast is no read
    lambda t, i, m: t.long(),
    lambda t, i, m: t.index_fill_(1, i, float("-inf")),  # the scalar travels as an argument
    lambda t, i, m: t[:, 0].masked_fill_(m, float("-inf")),
    lambda t, i, m: t.__setitem__((slice(None), 3), float("-inf")),  # a slice: fill_
    lambda t, i, m: t.__setitem__(i, torch.zeros(2, 5)),  # a device value
    lambda t, i, m: torch.repeat_interleave(i, i, output_size=2),
    lambda t, i, m: torch.where(m, t[:, 0], 0.0),
    lambda t, i, m: t.to("cpu", non_blocking=True),
])
def test_the_probe_passes_what_does_not_wait(op):
    t, i, m = torch.randn(4, 5), torch.tensor([0, 2]), torch.tensor([True, False, True, False])
    assert _probed(lambda: op(t, i, m)) == set()
