"""Speculative Jacobi decoding of image spans in the real vLLM CPU engine (V1 runner, our proposer and rejection
sampler): greedy codes equal one code per step for every family (with a masked edit, beside guided rows), an
input-independent checkpoint's codes follow its known distribution in far fewer forward passes, and a random
checkpoint's sampled codes match SJD off. SJD off is ``jacobi_window`` 1 in the same engine."""

import os

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # before vLLM is imported

import numpy as np
import pytest
from jacobi_reference import chi_square_p_value, code_distribution, two_sample_p_value

from engine.offline.tiny import TinySpec, make_tiny
from engine.shared.jacobi import speculative_settings
from engine.shared.vocab import TokenLayout
from engine.worker.runner_v1 import ChameleonSpanLogitsProcessorV1

WINDOW = 16
ROWS = 8  # max_num_seqs of the engines here: with this budget every row may draft a full window
BUDGET = ROWS * (WINDOW - 1)


def start(model_dir, budget: int = BUDGET, max_num_seqs: int = ROWS):
    from vllm import LLM

    spec, extra = speculative_settings(budget)
    return LLM(model=str(model_dir), enforce_eager=True, dtype="float32", max_model_len=512,
               max_num_seqs=max_num_seqs, seed=0, logits_processors=[ChameleonSpanLogitsProcessorV1],
               speculative_config=spec, additional_config=extra)


def prompts(layout: TokenLayout, count: int) -> list[list[int]]:
    text = [i for i in range(4, layout.vocab_size) if i not in set(layout.span_token_ids())]
    return [[0, *text[3 * k : 3 * k + 5], layout.sep] for k in range(count)]


def generate(llm, layout: TokenLayout, requests: list[tuple[list[int], dict]], seed: int = 5
             ) -> tuple[int, list[list[int]]]:
    """Image-only replies to (prompt, extra_args) pairs, added at once, and the engine steps (forward passes)
    they took together. vLLM's (text) top-k is set, as Lumina-mGPT's defaults set it: steps without drafts must
    not run vLLM's target-row path."""
    from vllm import SamplingParams

    engine, span = llm.llm_engine, layout.span.span_length((layout.span.native_grid,) * 2)
    for i, (prompt, extra) in enumerate(requests):
        engine.add_request(str(i), {"prompt_token_ids": prompt},
                           SamplingParams(max_tokens=span + 2, seed=seed + i, stop_token_ids=[layout.eoi], top_k=40,
                                          extra_args={"modalities": ["image"], **extra}))
    steps, outputs = 0, {}
    while engine.has_unfinished_requests():
        steps += 1
        outputs |= {out.request_id: list(out.outputs[0].token_ids) for out in engine.step() if out.finished}
    return steps, [outputs[str(i)] for i in range(len(requests))]


@pytest.mark.parametrize("family", ["chameleon", "lumina", "emu3"])
def test_greedy_codes_equal_one_code_per_step(tmp_path, family):
    """Each family's span (Chameleon's codes; Lumina-mGPT's size tokens and EOL rows; Emu3's size text, EOL rows
    and trailer) gives the same greedy codes with a window as without, several rows at once, a guided row among
    them (its companion runs the same window: every position guided); for Chameleon also a masked edit's kept
    cells."""
    model_dir = make_tiny(tmp_path / family, TinySpec(grid=4, codebook_size=64, family=family))
    layout = TokenLayout.from_checkpoint(model_dir)
    greedy = {"image_temperature": 0.0}
    uncond = [] if layout.span.guided_from_boi else [0]
    asks = [greedy, {**greedy, "jacobi_window": 5}, {**greedy, "cfg_scale": 3.0, "cfg_uncond_prompt": uncond}]
    if family == "chameleon":
        keep = [layout.code_to_id[(7 * i) % 64] if i % 3 else -1 for i in range(16)]
        asks.append({**greedy, "image_keep": keep})
    llm = start(model_dir)
    try:
        requests = list(zip(prompts(layout, len(asks)), asks, strict=True))
        _, on = generate(llm, layout, requests)
        _, off = generate(llm, layout, [(p, {**a, "jacobi_window": 1}) for p, a in requests])
        # forced tokens (kept cells; size tokens, EOL) are always kept: the last request alone takes fewer steps
        last, ask = requests[-1]
        off_steps = generate(llm, layout, [(last, {**ask, "jacobi_window": 1})])[0]
        fewer = generate(llm, layout, [(last, ask)])[0] < off_steps
    finally:
        llm.llm_engine.engine_core.shutdown()
    assert on == off
    assert fewer
    assert all(out[0] == layout.boi and out[-1] == layout.eoi for out in on)
    if family == "chameleon":
        kept = on[3][1:-1]
        assert all(k < 0 or t == k for t, k in zip(kept, keep, strict=True))


@pytest.fixture(scope="module")
def constant(tmp_path_factory):
    """An input-independent checkpoint (every position's next-token distribution the same) and its engine."""
    model_dir = make_tiny(tmp_path_factory.mktemp("constant"), TinySpec(grid=8, codebook_size=64,
                                                                         input_independent=True))
    llm = start(model_dir)
    yield model_dir, llm, TokenLayout.from_checkpoint(model_dir)
    llm.llm_engine.engine_core.shutdown()


def test_forward_passes_fall_with_the_window(constant):
    """Where every draft redrawn from p is kept, a window of 16 writes an image in >= 8x fewer forward passes
    than one code per step, with the same greedy codes."""
    _, llm, layout = constant
    [prompt] = prompts(layout, 1)
    off, codes_off = generate(llm, layout, [(prompt, {"image_temperature": 0.0, "jacobi_window": 1})])
    on, codes_on = generate(llm, layout, [(prompt, {"image_temperature": 0.0})])
    assert codes_on == codes_off
    assert off >= layout.image_seq_length + 1
    assert off >= 8 * on, (off, on)


def test_sampled_codes_follow_the_known_distribution(constant):
    """>= 2,000 codes sampled with windows (image temperature 1, top-p 0.9) pass a chi-square test against the
    checkpoint's known distribution after top-p."""
    model_dir, llm, layout = constant
    p = code_distribution(model_dir, temperature=1.0, top_p=0.9)
    extra = {"image_temperature": 1.0, "image_top_p": 0.9}
    ps = prompts(layout, 8)
    codes: list[int] = []
    steps = 0
    for round_ in range(4):
        taken, outs = generate(llm, layout, [(q, extra) for q in ps], seed=100 * round_)
        steps += taken
        codes += [t for out in outs for t in out[1:-1]]
    index = {t: i for i, t in enumerate(layout.code_to_id)}
    counts = np.bincount([index[t] for t in codes], minlength=len(p))
    assert counts.sum() >= 2000
    assert 4 * steps < len(codes) / len(ps)  # windows were verified: the images took far fewer steps than codes
    assert chi_square_p_value(counts, p) > 0.01


def test_sampled_codes_match_one_code_per_step_on_random_weights(tmp_path):
    """On random weights (context-dependent p), the code histograms of as many images with and without windows
    pass a two-sample test (over whole images: codes within one depend on each other)."""
    model_dir = make_tiny(tmp_path / "random", TinySpec(grid=8, codebook_size=64))
    layout = TokenLayout.from_checkpoint(model_dir)
    extra = {"image_temperature": 0.5}  # sharper than uniform, so that a biased rule would show
    index = {t: i for i, t in enumerate(layout.code_to_id)}
    llm = start(model_dir)
    try:
        runs, steps = {}, {}
        for window in (1, WINDOW):
            counts, steps[window] = [], 0
            for round_ in range(8):
                taken, outs = generate(llm, layout, [(q, {**extra, "jacobi_window": window})
                                                     for q in prompts(layout, ROWS)], seed=1000 * window + 100 * round_)
                steps[window] += taken
                counts += [np.bincount([index[t] for t in out[1:-1]], minlength=len(index)) for out in outs]
            runs[window] = np.array(counts)
    finally:
        llm.llm_engine.engine_core.shutdown()
    assert runs[1].sum() == runs[WINDOW].sum() >= 4000
    assert steps[WINDOW] < steps[1]  # drafts were kept
    assert two_sample_p_value(runs[1], runs[WINDOW]) > 0.01


def test_preemption_abort_and_choices_keep_greedy_codes(tmp_path):
    """Windows through what vLLM does to rows: six images at once in a 7-block cache (rows preempted mid-span
    resume with fresh windows), a request aborted mid-span beside another, and ``n`` = 2 choices; greedy codes
    equal one code per step throughout."""
    from vllm import LLM, SamplingParams

    model_dir = make_tiny(tmp_path / "tiny", TinySpec(grid=4, codebook_size=64))
    layout = TokenLayout.from_checkpoint(model_dir)
    spec, extra = speculative_settings(BUDGET)
    llm = LLM(model=str(model_dir), enforce_eager=True, dtype="float32", max_model_len=128, max_num_seqs=8,
              seed=0, block_size=32, num_gpu_blocks_override=7, disable_log_stats=False,
              logits_processors=[ChameleonSpanLogitsProcessorV1], speculative_config=spec, additional_config=extra)
    text = [i for i in range(4, layout.vocab_size) if i not in set(layout.span_token_ids())]
    long = [[0, *text[4 * k : 4 * k + 22], layout.sep] for k in range(6)]
    greedy = {"image_temperature": 0.0}
    try:
        before = sum(m.value for m in llm.get_metrics() if m.name == "vllm:num_preemptions")
        _, together = generate(llm, layout, [(p, greedy) for p in long])
        assert sum(m.value for m in llm.get_metrics() if m.name == "vllm:num_preemptions") > before
        alone = [generate(llm, layout, [(p, {**greedy, "jacobi_window": 1})])[1][0] for p in long]
        assert together == alone

        engine = llm.llm_engine
        image = SamplingParams(max_tokens=layout.image_seq_length + 2, stop_token_ids=[layout.eoi],
                               extra_args={"modalities": ["image"], **greedy})
        engine.add_request("aborted", {"prompt_token_ids": long[0]}, image)
        engine.add_request("kept", {"prompt_token_ids": long[1]}, image)
        for _ in range(3):
            engine.step()
        engine.abort_request(["aborted"])
        kept = []
        while engine.has_unfinished_requests():
            kept += [list(o.outputs[0].token_ids) for o in engine.step() if o.finished]
        assert kept == [alone[1]]

        sampled = SamplingParams(n=2, seed=9, max_tokens=layout.image_seq_length + 2, stop_token_ids=[layout.eoi],
                                 logprobs=1, extra_args={"modalities": ["image"], "image_temperature": 1.0})
        [out] = llm.generate([{"prompt_token_ids": long[2]}], sampled, use_tqdm=False)
        choices = [list(c.token_ids) for c in out.outputs]
        assert len(choices) == 2 and choices[0] != choices[1]
        for choice in out.outputs:  # a logprob per token, several a step, each of its own token
            assert len(choice.logprobs) == len(choice.token_ids)
            assert all(t in lp and lp[t].logprob <= 0.0 for t, lp in zip(choice.token_ids, choice.logprobs))
        assert all(c[0] == layout.boi and c[-1] == layout.eoi and len(c) == layout.image_seq_length + 2
                   for c in choices)
    finally:
        llm.llm_engine.engine_core.shutdown()


def test_tensor_parallel_ranks_agree_on_windows(engine_env, tmp_path):
    """At TP=2 every rank verifies and drafts alike (uniforms counter-based on seed and position): greedy codes
    equal one code per step, and sampled images complete with valid spans."""
    from vllm import LLM

    model_dir = make_tiny(tmp_path / "tiny", TinySpec(grid=8, codebook_size=64))
    layout = TokenLayout.from_checkpoint(model_dir)
    engine_env.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    spec, extra = speculative_settings(BUDGET)
    llm = LLM(model=str(model_dir), enforce_eager=True, dtype="float32", max_model_len=512, max_num_seqs=8, seed=0,
              tensor_parallel_size=2, distributed_executor_backend="mp",
              logits_processors=[ChameleonSpanLogitsProcessorV1], speculative_config=spec, additional_config=extra)
    try:
        ps = prompts(layout, 3)
        greedy = {"image_temperature": 0.0}
        _, on = generate(llm, layout, [(p, greedy) for p in ps])
        _, off = generate(llm, layout, [(p, {**greedy, "jacobi_window": 1}) for p in ps])
        _, sampled = generate(llm, layout, [(p, {"image_temperature": 1.0}) for p in ps])
    finally:
        llm.llm_engine.engine_core.shutdown()
    assert on == off
    codes = set(layout.code_to_id)
    assert all(s[0] == layout.boi and s[-1] == layout.eoi and set(s[1:-1]) <= codes and
               len(s) == layout.image_seq_length + 2 for s in sampled)
