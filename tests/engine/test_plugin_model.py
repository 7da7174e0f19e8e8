"""Our vLLM Chameleon model against transformers' (the oracle): same greedy tokens.

transformers masks image codes in its own logits; vLLM gets the same constraint through
``allowed_token_ids`` so both sides choose among the same ids, and neither may emit BOI/EOI.
"""

import os

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import pytest
import torch

from engine.tiny import TinySpec, make_tiny
from engine.vocab import TokenLayout

NEW_TOKENS = 24
PARITY_SPECS = {
    "prenorm": TinySpec(),
    "swin": TinySpec(swin_norm=True, grid=8, codebook_size=64),
}


def make_checkpoint(dst, spec: TinySpec):
    """``make_tiny`` with random per-head qk-norm and RMSNorm weights.

    make_tiny leaves norms at ones/zeros; varied ones exercise the per-head scale and
    shift (and their TP sharding) and the norm placement of the Swin variant.
    """
    from safetensors.torch import load_file, save_file

    make_tiny(dst, spec)
    path = dst / "model.safetensors"
    state = load_file(path)
    gen = torch.Generator().manual_seed(spec.seed + 7)
    for name, t in state.items():
        if "norm" in name and not name.startswith("model.vqmodel."):
            noise = torch.rand(t.shape, generator=gen) if name.endswith("weight") else torch.randn(t.shape, generator=gen)
            state[name] = ((0.5 + noise) if name.endswith("weight") else 0.3 * noise).to(t.dtype)
    save_file(state, path, metadata={"format": "pt"})
    return dst


def prompts_for(layout: TokenLayout) -> list[list[int]]:
    """Token-id prompts; one holds a whole image span (BOI, grid*grid codes, EOI)."""
    gen = torch.Generator().manual_seed(3)
    codes = torch.randint(0, layout.codebook_size, (layout.image_seq_length,), generator=gen)
    text = [i for i in range(layout.vocab_size) if i not in set(layout.forbidden_outside_span().tolist())]
    pick = lambda n, seed: [text[int(i)] for i in torch.randint(4, len(text), (n,), generator=torch.Generator().manual_seed(seed))]  # noqa: E731
    return [
        [0, *pick(5, 1)],
        [0, *pick(40, 2)],
        [0, *pick(7, 4), *layout.image_span(codes), layout.sep],
        [0, layout.sep],
    ]


def allowed_ids(layout: TokenLayout) -> list[int]:
    forbidden = set(layout.forbidden_outside_span().tolist())
    return [i for i in range(layout.vocab_size) if i not in forbidden]


def transformers_greedy(model_dir, prompts, layout) -> list[list[int]]:
    from transformers import ChameleonForConditionalGeneration

    model = ChameleonForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    outs = []
    for ids in prompts:
        x = torch.tensor([ids])
        y = model.generate(x, do_sample=False, max_new_tokens=NEW_TOKENS, suppress_tokens=[layout.boi, layout.eoi],
                           eos_token_id=None)  # ignore_eos on both sides
        outs.append(y[0, x.shape[1]:].tolist())
    return outs


def vllm_greedy(llm, prompts, allowed) -> list[list[int]]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, allowed_token_ids=allowed)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def start_llm(model_dir, dtype="float32"):
    from vllm import LLM

    return LLM(model=str(model_dir), enforce_eager=True, dtype=dtype, max_model_len=4096, seed=0)


def stop_llm(llm) -> None:
    llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module", params=sorted(PARITY_SPECS))
def parity_engine(request, tmp_path_factory):
    """(llm, checkpoint dir, layout) for one spec; one engine alive at a time."""
    model_dir = make_checkpoint(tmp_path_factory.mktemp(request.param), PARITY_SPECS[request.param])
    llm = start_llm(model_dir)
    yield llm, model_dir, TokenLayout.from_checkpoint(model_dir)
    stop_llm(llm)


def test_loaded_model_is_ours(parity_engine):
    llm, model_dir, _ = parity_engine
    classes = llm.apply_model(lambda model: f"{type(model).__module__}.{type(model).__qualname__}")
    assert classes == ["engine.chameleon.ChameleonForConditionalGeneration"]


def test_greedy_parity_with_transformers(parity_engine):
    llm, model_dir, layout = parity_engine
    prompts = prompts_for(layout)
    got = vllm_greedy(llm, prompts, allowed_ids(layout))
    want = transformers_greedy(model_dir, prompts, layout)
    assert [len(g) for g in got] == [NEW_TOKENS] * len(prompts)
    for prompt, g, w in zip(prompts, got, want):
        assert g == w, f"prompt of {len(prompt)} tokens"


def test_bf16_checkpoint_generates(tmp_path):
    model_dir = make_tiny(tmp_path / "bf16", TinySpec(dtype="bfloat16", grid=8, codebook_size=64))
    layout = TokenLayout.from_checkpoint(model_dir)
    llm = start_llm(model_dir, dtype="bfloat16")
    try:
        outs = vllm_greedy(llm, prompts_for(layout), None)
    finally:
        stop_llm(llm)
    assert all(len(o) == NEW_TOKENS for o in outs)
    assert all(0 <= t < layout.vocab_size for o in outs for t in o)
