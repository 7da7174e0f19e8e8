"""Our vLLM Chameleon model against transformers' (the oracle): same greedy tokens.

transformers masks image codes in its own logits; vLLM gets the same constraint through
``allowed_token_ids``, and neither side may emit BOI/EOI, so both choose among the same ids.
"""

from operator import attrgetter

import pytest
import torch

from engine.offline.tiny import TinySpec, make_tiny
from engine.shared.vocab import TokenLayout

NEW_TOKENS = 24
PARITY_SPECS = {
    "prenorm": TinySpec(),
    "swin": TinySpec(swin_norm=True, grid=8, codebook_size=64),
}
OUR_MODEL = "engine.worker.model.ChameleonForConditionalGeneration"


def text_ids(layout: TokenLayout) -> list[int]:
    """Every id a text-only request may produce: no image code, no BOI/EOI."""
    forbidden = set(layout.span_token_ids())
    return [i for i in range(layout.vocab_size) if i not in forbidden]


def prompts_for(layout: TokenLayout) -> list[list[int]]:
    """Token-id prompts of several lengths; one holds a whole image span (BOI, codes, EOI)."""
    text = text_ids(layout)

    def words(n: int, seed: int) -> list[int]:
        picks = torch.randint(4, len(text), (n,), generator=torch.Generator().manual_seed(seed))
        return [text[i] for i in picks.tolist()]

    codes = torch.randint(0, layout.codebook_size, (layout.image_seq_length,),
                          generator=torch.Generator().manual_seed(3))
    return [
        [0, *words(5, 1)],
        [0, *words(40, 2)],
        [0, *words(7, 4), *layout.image_span(codes), layout.sep],
        [0, layout.sep],
    ]


@torch.inference_mode()
def transformers_greedy(model_dir, prompts: list[list[int]], layout: TokenLayout) -> list[list[int]]:
    from transformers import ChameleonForConditionalGeneration

    model = ChameleonForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    outs = []
    for ids in prompts:
        x = torch.tensor([ids])
        y = model.generate(x, do_sample=False, max_new_tokens=NEW_TOKENS,
                           suppress_tokens=[layout.boi, layout.eoi], eos_token_id=None)  # like ignore_eos
        outs.append(y[0, x.shape[1]:].tolist())
    return outs


def vllm_greedy(llm, prompts: list[list[int]], allowed: list[int] | None) -> list[list[int]]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True,
                            allowed_token_ids=allowed)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def start_llm(model_dir, dtype: str = "float32"):
    from vllm import LLM

    return LLM(model=str(model_dir), enforce_eager=True, dtype=dtype, max_model_len=4096, seed=0)


def loaded_model_classes(llm) -> list[str]:
    """Qualified name of the model class each worker built (the function must pickle by name)."""
    names = llm.apply_model(attrgetter("__class__.__module__", "__class__.__qualname__"))
    return [".".join(n) for n in names]


@pytest.fixture(scope="module", params=sorted(PARITY_SPECS))
def parity_engine(request, engine_env, tiny_checkpoint):
    """(llm, checkpoint dir, layout) for one spec; pytest ends one before starting the next."""
    model_dir = tiny_checkpoint(PARITY_SPECS[request.param])
    llm = start_llm(model_dir)
    yield llm, model_dir, TokenLayout.from_checkpoint(model_dir)
    llm.llm_engine.engine_core.shutdown()


def test_loaded_model_is_ours(parity_engine):
    llm, _, _ = parity_engine
    assert loaded_model_classes(llm) == [OUR_MODEL]


def test_greedy_parity_with_transformers(parity_engine):
    llm, model_dir, layout = parity_engine
    prompts = prompts_for(layout)
    got = vllm_greedy(llm, prompts, text_ids(layout))
    want = transformers_greedy(model_dir, prompts, layout)
    for prompt, g, w in zip(prompts, got, want, strict=True):
        assert len(g) == NEW_TOKENS
        assert g == w, f"prompt of {len(prompt)} tokens"


def test_bf16_checkpoint_generates(engine_env, tmp_path):
    model_dir = make_tiny(tmp_path / "bf16", TinySpec(dtype="bfloat16", grid=8, codebook_size=64))
    layout = TokenLayout.from_checkpoint(model_dir)
    llm = start_llm(model_dir, dtype="bfloat16")
    try:
        assert loaded_model_classes(llm) == [OUR_MODEL]
        outs = vllm_greedy(llm, prompts_for(layout), None)
    finally:
        llm.llm_engine.engine_core.shutdown()
    assert all(len(o) == NEW_TOKENS and all(0 <= t < layout.vocab_size for t in o) for o in outs)
