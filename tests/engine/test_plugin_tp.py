"""Tensor parallelism on the CPU build: TP=2 gives the same greedy tokens as TP=1, guided images included.

Two CPU workers need an explicit thread binding, one core each ("0|1"); without it vLLM
refuses ("Not enough allowed NUMA nodes to bind threads of 2 local CPUWorkers").
"""

from operator import attrgetter

import torch
from guidance_reference import guided_image_reference

from engine.offline.tiny import TinySpec
from engine.shared.vocab import TokenLayout

NEW_TOKENS = 24
SPEC = TinySpec(grid=8, codebook_size=64)  # 4 heads, 2 KV heads: each rank holds 2 + 1


def prompts_for(layout: TokenLayout) -> list[list[int]]:
    gen = torch.Generator().manual_seed(5)
    codes = torch.randint(0, layout.codebook_size, (layout.image_seq_length,), generator=gen)
    forbidden = set(layout.span_token_ids())
    text = [i for i in range(layout.vocab_size) if i not in forbidden]
    words = [text[i] for i in torch.randint(0, len(text), (12,), generator=gen).tolist()]
    return [[0, *words], [0, *words[:3], *layout.image_span(codes), layout.sep]]


def greedy(model_dir, prompts: list[list[int]], tp: int) -> tuple[list[list[int]], list[str]]:
    """Greedy tokens (unconstrained, EOS ignored) and the model class each worker built."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=str(model_dir), enforce_eager=True, dtype="float32", max_model_len=4096, seed=0,
              tensor_parallel_size=tp, distributed_executor_backend="mp")
    try:
        params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        names = llm.apply_model(attrgetter("__class__.__module__", "__class__.__qualname__"))
    finally:
        llm.llm_engine.engine_core.shutdown()
    return [list(o.outputs[0].token_ids) for o in outs], [".".join(n) for n in names]


def test_tp2_matches_tp1(engine_env, tiny_checkpoint):
    model_dir = tiny_checkpoint(SPEC)
    prompts = prompts_for(TokenLayout.from_checkpoint(model_dir))
    tp1, _ = greedy(model_dir, prompts, tp=1)
    engine_env.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    tp2, classes = greedy(model_dir, prompts, tp=2)
    assert classes == ["engine.worker.model.ChameleonForConditionalGeneration"] * 2
    assert tp2 == tp1


def test_tp2_guided_image_equals_two_forward_reference(engine_env, tiny_checkpoint):
    """Each rank runs the row and its companion on its own shard in the same batch (their projections
    all-reduce), and draws the same codes."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from engine.worker.runner_v1 import ChameleonSpanLogitsProcessorV1

    model_dir = tiny_checkpoint(SPEC)
    layout = TokenLayout.from_checkpoint(model_dir)
    prompt, uncond = [*prompts_for(layout)[0], layout.sep], [0, layout.sep]
    engine_env.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    llm = LLM(model=str(model_dir), enforce_eager=True, dtype="float32", max_model_len=4096, seed=0,
              tensor_parallel_size=2, distributed_executor_backend="mp",
              logits_processors=[ChameleonSpanLogitsProcessorV1])
    try:
        params = SamplingParams(max_tokens=layout.image_seq_length + 2, stop_token_ids=[layout.eoi], extra_args={
            "modalities": ["image"], "image_temperature": 0.0, "cfg_scale": 3.0, "cfg_uncond_prompt": uncond})
        [out] = llm.generate([TokensPrompt(prompt_token_ids=prompt)], params, use_tqdm=False)
    finally:
        llm.llm_engine.engine_core.shutdown()
    assert list(out.outputs[0].token_ids) == guided_image_reference(model_dir, prompt, uncond, 3.0)


EMU3 = TinySpec(grid=4, codebook_size=64, family="emu3")  # Emu3's Llama: 4 heads, 2 KV heads, no q/k norms


def test_emu3_tp2_matches_tp1(engine_env, tiny_checkpoint):
    """Emu3's text model (weights under its published names) splits over two ranks with the same tokens, after
    a text prompt and after one holding an image span in Emu3's format."""
    model_dir = tiny_checkpoint(EMU3)
    layout = TokenLayout.from_checkpoint(model_dir)
    gen = torch.Generator().manual_seed(7)
    codes = torch.randint(0, layout.codebook_size, (3, 5), generator=gen)  # not square: "3*5" in its prefix
    forbidden = set(layout.span_token_ids())
    text = [i for i in range(layout.vocab_size) if i not in forbidden]
    words = [text[i] for i in torch.randint(0, len(text), (10,), generator=gen).tolist()]
    prompts = [[*words], [*words[:3], *layout.image_span(codes), *words[3:6]]]
    tp1, _ = greedy(model_dir, prompts, tp=1)
    engine_env.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    tp2, classes = greedy(model_dir, prompts, tp=2)
    assert classes == ["engine.worker.model.ChameleonForConditionalGeneration"] * 2
    assert tp2 == tp1
