"""The image-span grammar on CPU tensors with a small fake vocabulary (40 ids, 8 codes, 4 codes per image)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from engine.shared.families import CHAMELEON
from engine.shared.request_options import IMAGE_ONLY, INTERLEAVED, TEXT_ONLY, RequestOptions
from engine.shared.vocab import TokenLayout
from engine.worker.code_sampler import CodeSampler, counter_uniforms
from engine.worker.span_grammar import SpanGrammar
from engine.worker.span_rules import span_position

V, N = 40, 4
CODES = tuple(range(4, 12))
LAYOUT = TokenLayout(boi=13, eoi=12, image_placeholder=14, sep=15, vocab_size=V, image_seq_length=N,
                     code_to_id=CODES)
BOI, EOI = LAYOUT.boi, LAYOUT.eoi
TEXT = [t for t in range(V) if t not in CODES and t not in (BOI, EOI)]


def allowed(row: torch.Tensor) -> set[int]:
    return set(torch.isfinite(row).nonzero().flatten().tolist())


def grammar(*params: RequestOptions, tails=None) -> SpanGrammar:
    g = SpanGrammar(LAYOUT, max_slots=8)
    for slot, p in enumerate(params):
        g.add(slot, p, tails[slot] if tails else [1, 2, 3], 0)
    return g


def step(g: SpanGrammar, slots: list[int], logits: torch.Tensor | None = None) -> torch.Tensor:
    logits = torch.randn(len(slots), V) if logits is None else logits
    return g.apply(logits, np.array(slots, dtype=np.int64))


def commit(g: SpanGrammar, slots: list[int], tokens: list[int]) -> None:
    g.advance(np.array(slots, dtype=np.int64), np.array(tokens, dtype=np.int64))


def test_text_only_rows_forbid_codes_boi_eoi():
    g = grammar(RequestOptions(mode=TEXT_ONLY), RequestOptions(mode=TEXT_ONLY))
    out = step(g, [0, 1])
    for row in out:
        assert allowed(row) == set(TEXT)


def test_text_only_never_enters_a_span_even_after_a_boi_in_history():
    g = grammar(RequestOptions(mode=TEXT_ONLY), tails=[[1, BOI, 4]])
    assert allowed(step(g, [0])[0]) == set(TEXT)


def test_interleaved_allows_boi_only():
    g = grammar(RequestOptions(mode=INTERLEAVED))
    assert allowed(step(g, [0])[0]) == set(TEXT) | {BOI}


def test_after_boi_exactly_n_codes_then_eoi_then_text():
    g = grammar(RequestOptions(mode=INTERLEAVED, image_temperature=1.0))
    commit(g, [0], [BOI])
    for _ in range(N):
        row = step(g, [0])[0]
        (tok,) = allowed(row)
        assert tok in CODES and row[tok] == 0.0
        commit(g, [0], [tok])
    assert allowed(step(g, [0])[0]) == {EOI}
    commit(g, [0], [EOI])
    assert allowed(step(g, [0])[0]) == set(TEXT) | {BOI}


def test_a_forced_token_forbidden_by_an_earlier_stage_stays_forbidden():
    """Model Runner V2's interface: a processor must not re-allow what an earlier stage (vLLM's min_tokens, a
    bad word, a grammar) set to -inf. Codes drawn by the grammar itself stay allowed."""
    g = grammar(RequestOptions(mode=IMAGE_ONLY), RequestOptions(mode=IMAGE_ONLY, image_temperature=0.0),
                RequestOptions(mode=INTERLEAVED), tails=[[1], [BOI], [BOI, *CODES[:N]]])
    logits = torch.randn(3, V)
    logits[0, BOI] = logits[2, EOI] = float("-inf")
    rows = step(g, [0, 1, 2], logits)
    assert allowed(rows[0]) == set() and allowed(rows[2]) == set()
    assert len(allowed(rows[1])) == 1
    lone = grammar(RequestOptions(mode=IMAGE_ONLY))
    assert allowed(step(lone, [0], torch.full((1, V), float("-inf")))[0]) == set()  # a batch of forced rows only


def test_image_only_forces_boi_first_then_text_after_the_image():
    g = grammar(RequestOptions(mode=IMAGE_ONLY))
    assert allowed(step(g, [0])[0]) == {BOI}
    commit(g, [0], [BOI])
    for _ in range(N):
        (tok,) = allowed(step(g, [0])[0])
        commit(g, [0], [tok])
    assert allowed(step(g, [0])[0]) == {EOI}
    commit(g, [0], [EOI])
    assert allowed(step(g, [0])[0]) == set(TEXT)


def test_one_apply_over_a_batch_mixing_every_mode_and_phase():
    g = grammar(
        RequestOptions(mode=TEXT_ONLY),
        RequestOptions(mode=INTERLEAVED),
        RequestOptions(mode=IMAGE_ONLY),
        RequestOptions(mode=INTERLEAVED),  # mid-span
        RequestOptions(mode=IMAGE_ONLY),  # span full: EOI next
        tails=[[1], [1], [1], [1, BOI, 4], [1, BOI, 4, 5, 6, 7]],
    )
    g.state.num_output[4] = 5
    rows = step(g, [4, 0, 3, 2, 1])  # rows in any slot order
    assert allowed(rows[0]) == {EOI}
    assert allowed(rows[1]) == set(TEXT)
    assert len(allowed(rows[2])) == 1 and allowed(rows[2]) <= set(CODES)
    assert allowed(rows[3]) == {BOI}
    assert allowed(rows[4]) == set(TEXT) | {BOI}


def test_an_empty_batch_is_left_as_it_is():
    g = grammar(RequestOptions(mode=IMAGE_ONLY), tails=[[BOI]])
    assert step(g, [], torch.empty(0, V)).shape == (0, V)


def test_untouched_text_logits_keep_their_values():
    g = grammar(RequestOptions(mode=INTERLEAVED), RequestOptions(mode=TEXT_ONLY))
    logits = torch.randn(2, V)
    out = step(g, [0, 1], logits.clone())
    assert torch.equal(out[:, TEXT], logits[:, TEXT])
    assert out[0, BOI] == logits[0, BOI]


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        ([1, 2, 3], -1),
        ([1, BOI], 0),
        ([1, BOI, 4, 5], 2),
        ([BOI, 4, 5, 6, 7], 4),  # full: EOI is next
        ([1, BOI, 4, 5, 6, 7, EOI], -1),
        ([1, BOI, 4, 5, 6, 7, EOI, 2, 3], -1),
        ([BOI, 4, 5, EOI, BOI, 6], 1),  # the last BOI counts
        ([4, 5, 6], -1),  # codes with no BOI in sight
        ([], -1),
    ],
)
def test_position_rebuilt_from_history(tail, expected):
    assert span_position(tail, LAYOUT) == expected


def test_resumed_request_continues_its_span():
    """A request preempted after BOI + 2 codes re-enters and must write exactly 2 more."""
    g = grammar(RequestOptions(mode=INTERLEAVED, image_temperature=0.0), tails=[[1, 2, BOI, 4, 5]])
    for _ in range(2):
        (tok,) = allowed(step(g, [0])[0])
        assert tok in CODES
        commit(g, [0], [tok])
    assert allowed(step(g, [0])[0]) == {EOI}


def test_resync_replaces_state():
    g = grammar(RequestOptions(mode=INTERLEAVED))
    g.resync(0, [1, BOI, 4, 5, 6], 7)
    assert g.state.pos[0] == 3 and g.state.num_output[0] == 7


@pytest.mark.parametrize("beside_text", [False, True])
def test_greedy_image_rows_take_the_argmax_among_codes(beside_text):
    """Beside a text row, the image row's codes are read before the text rows' codes are masked."""
    greedy = RequestOptions(mode=INTERLEAVED, image_temperature=0.0)
    g = grammar(RequestOptions(mode=TEXT_ONLY), greedy, tails=[[1], [BOI]]) if beside_text else \
        grammar(greedy, tails=[[BOI]])
    slots = [0, 1] if beside_text else [0]
    logits = torch.zeros(len(slots), V)
    logits[-1, 1] = 100.0  # a text token would win without the grammar
    logits[-1, 9] = 5.0
    logits[-1, 6] = 4.0
    rows = step(g, slots, logits)
    assert allowed(rows[-1]) == {9}
    if beside_text:
        assert allowed(rows[0]) == set(TEXT)


@pytest.mark.parametrize("params", [{"image_top_k": 1}, {"image_top_p": 1e-6}])
def test_top_k_1_or_tiny_top_p_is_the_argmax(params):
    g = grammar(RequestOptions(mode=INTERLEAVED, image_temperature=1.0, **params), tails=[[BOI]])
    for _ in range(20):
        logits = torch.randn(1, V)
        best = CODES[int(logits[0, list(CODES)].argmax())]
        assert allowed(step(g, [0], logits)[0]) == {best}


@pytest.mark.parametrize("bad_codes, value", [(list(CODES), float("-inf")), ([CODES[0]], float("nan"))])
def test_a_row_without_usable_code_logits_samples_every_code(bad_codes, value):
    """No finite code logit, or a NaN among them: the row still gets one code, drawn uniformly, and the other
    rows of the batch are sampled from their own logits."""
    g = grammar(*[RequestOptions(mode=IMAGE_ONLY, image_temperature=1.0, image_top_p=0.9)] * 2, tails=[[BOI], [BOI]])
    seen = set()
    for i in range(200):
        g.state.seed[:] = i  # each draw from another seed
        logits = torch.randn(2, V)
        logits[0, bad_codes] = value
        logits[1, list(CODES)] = -50.0
        logits[1, CODES[3]] = 50.0
        out = step(g, [0, 1], logits)
        [code] = allowed(out[0])
        seen.add(code)
        assert allowed(out[1]) == {CODES[3]}
    assert seen == set(CODES)


def test_top_k_limits_the_support():
    logits = torch.zeros(1, V)
    logits[0, [4, 5, 6]] = torch.tensor([3.0, 2.0, 1.0])
    seen = set()
    for seed in range(200):
        g = grammar(RequestOptions(mode=INTERLEAVED, image_temperature=5.0, image_top_k=2, image_top_p=1.0,
                               seed=seed), tails=[[BOI]])
        seen |= allowed(step(g, [0], logits.clone())[0])
    assert seen == {4, 5}


def _frequencies(params: RequestOptions, logits_row: torch.Tensor, draws: int = 20000) -> torch.Tensor:
    """Empirical distribution over the 8 codes of ``draws`` image rows sharing one logits row."""
    g = SpanGrammar(LAYOUT, max_slots=draws)
    for s in range(draws):
        g.add(s, params, [BOI], 1)
    out = g.apply(logits_row.expand(draws, V).clone(), np.arange(draws))
    picks = torch.isfinite(out).float()[:, list(CODES)]
    assert torch.all(picks.sum(1) == 1)
    return picks.mean(0)


def _nucleus(code_logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The reference: sort, keep top-k, keep the smallest prefix reaching top-p, renormalise."""
    p_sorted, order = (code_logits / temperature).softmax(0).sort(descending=True)
    keep = torch.arange(len(p_sorted)) < (top_k or len(p_sorted))
    p_sorted = torch.where(keep, p_sorted, 0.0)
    p_sorted = p_sorted / p_sorted.sum()
    keep &= p_sorted.cumsum(0) - p_sorted < top_p
    ref = torch.zeros_like(p_sorted)
    ref[order] = torch.where(keep, p_sorted, 0.0)
    return ref / ref.sum()


@pytest.mark.parametrize(("temperature", "top_k", "top_p"),
                         [(1.0, 0, 1.0), (0.7, 0, 0.9), (1.0, 0, 0.5), (2.0, 3, 1.0), (1.0, 5, 0.6)])
@pytest.mark.parametrize("rounds", [CodeSampler.MAX_ATTEMPTS, 0])  # 0: every row takes the sorted fallback
def test_image_sampling_matches_the_reference_distribution(monkeypatch, temperature, top_k, top_p, rounds):
    monkeypatch.setattr(CodeSampler, "MAX_ATTEMPTS", rounds)
    torch.manual_seed(0)
    logits = torch.zeros(1, V)
    code_logits = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, 3.0])
    logits[0, list(CODES)] = code_logits
    logits[0, 1] = 50.0  # text never leaks into an image row
    params = RequestOptions(mode=INTERLEAVED, image_temperature=temperature, image_top_k=top_k, image_top_p=top_p)
    got = _frequencies(params, logits)
    want = _nucleus(code_logits, temperature, top_k, top_p)
    assert torch.all((want == 0) <= (got == 0))  # nothing outside the nucleus
    assert torch.allclose(got, want, atol=0.015), (got, want)


def _image_codes(seed: int | None, slot_order: list[int], others: int | None | str = "same") -> list[int]:
    """Codes of slot 0's image; the other slots' requests have seed ``others`` (default: slot 0's)."""
    seeds = [seed if others == "same" or slot == 0 else others for slot in range(len(slot_order))]
    g = grammar(*[RequestOptions(mode=IMAGE_ONLY, image_temperature=1.0, seed=s) for s in seeds])
    torch.manual_seed(123)
    codes = []
    commit(g, slot_order, [BOI] * len(slot_order))
    for _ in range(N):
        rows = step(g, slot_order, torch.zeros(len(slot_order), V))  # flat: the draw is all randomness
        toks = [allowed(r).pop() for r in rows]
        codes.append(toks[slot_order.index(0)])
        commit(g, slot_order, toks)
    return codes


def test_seeded_image_sampling_is_reproducible_across_batches():
    first = _image_codes(7, [0])
    assert _image_codes(7, [0]) == first
    assert _image_codes(7, [1, 0, 2]) == first  # batch position and neighbours do not matter
    assert _image_codes(7, [1, 0, 2], others=None) == first  # unseeded neighbours neither
    assert any(_image_codes(s, [0]) != first for s in (8, 9, 10))


def _splitmix64_uniform(seed: int, step: int, attempt: int) -> float:
    """splitmix64's finalizer over a mix of the three counters, in Python integers."""
    mask = (1 << 64) - 1
    z = (seed * 0x9E3779B97F4A7C15 + step * 0xD1B54A32D192ED03 + attempt * 0x8CB92BA72F3D8DD7) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return ((z ^ (z >> 31)) >> 11) * 2.0**-53


def test_counter_uniforms_are_splitmix64_of_seed_step_and_attempt():
    seeds = np.array([0, 1, 7, 2**63 - 1, 123456789], dtype=np.int64)
    steps = np.array([0, 5, 1000, 3, 2**40], dtype=np.int64)
    for attempt in (0, 1, 15):
        attempts = np.full_like(seeds, attempt)
        got = counter_uniforms(seeds, steps, attempts)
        assert got.tolist() == [_splitmix64_uniform(int(a), int(b), attempt) for a, b in zip(seeds, steps)]
        assert ((got >= 0) & (got < 1)).all()
        # the same code on tensors (the device form, Model Runner V2's), bit for bit
        on_tensors = counter_uniforms(*(torch.from_numpy(x) for x in (seeds, steps, attempts)))
        assert on_tensors.dtype == torch.float64 and on_tensors.tolist() == got.tolist()


def test_unseeded_rows_sample_in_one_draw_and_vary():
    g = grammar(*[RequestOptions(mode=INTERLEAVED, image_temperature=1.0) for _ in range(8)],
                tails=[[BOI]] * 8)
    rows = step(g, list(range(8)), torch.zeros(8, V))
    toks = [allowed(r).pop() for r in rows]
    assert all(t in CODES for t in toks) and len(set(toks)) > 1


def test_move_and_swap_carry_state():
    g = grammar(RequestOptions(mode=INTERLEAVED), RequestOptions(mode=IMAGE_ONLY), tails=[[BOI, 4], [1]])
    g.move(0, 1, swap=True)
    assert (g.state.mode[0], g.state.mode[1], g.state.pos[1]) == (IMAGE_ONLY, INTERLEAVED, 1)
    g.move(1, 5, swap=False)
    assert (g.state.mode[5], g.state.pos[5], g.state.mode[1]) == (INTERLEAVED, 1, TEXT_ONLY)
    g.remove(5)
    assert allowed(step(g, [5])[0]) == set(TEXT)


def test_defaults_and_modalities():
    sp = RequestOptions.from_extra_args(None)
    assert (sp.mode, sp.image_temperature, sp.image_top_k, sp.image_top_p) == (
        TEXT_ONLY, CHAMELEON.sampling.image_temperature, 0, CHAMELEON.sampling.image_top_p)
    assert RequestOptions.from_extra_args({"modalities": ["image", "text"]}).mode == INTERLEAVED
    image_only = RequestOptions.from_extra_args({"modalities": ["image"]}, seed=3)
    assert image_only == RequestOptions(mode=IMAGE_ONLY, seed=3)
    other_keys = {"modalities": ["text"], "other_processor_key": 1}
    RequestOptions.from_sampling_params(SimpleNamespace(extra_args=other_keys, seed=None))


@pytest.mark.parametrize(
    ("extra_args", "message"),
    [
        ({"modalities": ["audio"]}, "unknown modality 'audio'"),
        ({"modalities": []}, "non-empty list"),
        ({"modalities": "image"}, "non-empty list"),
        ({"image_temperature": -0.1}, "image_temperature"),
        ({"image_temperature": "hot"}, "image_temperature"),
        ({"image_temperature": float("nan")}, "image_temperature"),
        ({"image_temperature": float("inf")}, "image_temperature"),
        ({"image_top_k": -1}, "image_top_k"),
        ({"image_top_k": 2.5}, "image_top_k"),
        ({"image_top_p": 0}, "image_top_p must be in (0, 1]"),
        ({"image_top_p": 1.5}, "image_top_p"),
    ],
)
def test_validate_params_rejects_bad_values(extra_args, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        RequestOptions.from_sampling_params(SimpleNamespace(extra_args=extra_args, seed=None))


def check_stream(tokens: list[int], mode: int) -> None:
    """The span rule on one finished token stream."""
    i = 0
    if mode == IMAGE_ONLY:
        assert tokens[0] == BOI
    while i < len(tokens):
        t = tokens[i]
        if t == BOI:
            assert mode != TEXT_ONLY and (mode == INTERLEAVED or i == 0)
            span = tokens[i + 1 : i + 1 + N]
            assert all(c in CODES for c in span), tokens
            if i + 1 + N < len(tokens):
                assert tokens[i + 1 + N] == EOI, tokens
            i += N + 2
        else:
            assert t in TEXT, tokens
            i += 1


def test_random_streams_obey_the_span_rule():
    """Property-style: random batches, random logits, random picks among what the grammar allows."""
    rng = random.Random(0)
    for trial in range(60):
        slots = rng.sample(range(8), rng.randint(1, 8))
        params = {s: RequestOptions(mode=rng.choice([TEXT_ONLY, INTERLEAVED, IMAGE_ONLY]),
                                image_temperature=rng.choice([0.0, 0.7, 2.0]),
                                image_top_k=rng.choice([0, 1, 3]), image_top_p=rng.choice([1.0, 0.5]),
                                seed=rng.choice([None, trial])) for s in slots}
        g = SpanGrammar(LAYOUT, max_slots=8)
        for s in slots:
            g.add(s, params[s], [1, 2], 0)
        streams = {s: [] for s in slots}
        for _ in range(rng.randint(1, 30)):
            rng.shuffle(slots)
            logits = torch.randn(len(slots), V) * 3
            logits[:, BOI] += 2.0  # make images common
            rows = g.apply(logits, np.array(slots, dtype=np.int64))
            picks = [rng.choice(sorted(allowed(r))) for r in rows]
            for s, t in zip(slots, picks):
                streams[s].append(t)
            commit(g, slots, picks)
            if rng.random() < 0.1:  # preemption: re-place one slot from its history
                s = rng.choice(slots)
                g.add(s, params[s], [1, 2, *streams[s]], len(streams[s]))
        for s in slots:
            check_stream(streams[s], params[s].mode)


@pytest.mark.parametrize("n_text", [0, 1, 3, 8])
def test_codes_out_of_id_order_mask_every_text_row_fully(n_text):
    """Codebook order != id order (as in a checkpoint with codes reversed): masking must still be
    rows x all code columns, also when the batch mixes text rows with forced image rows."""
    layout = TokenLayout(boi=13, eoi=12, image_placeholder=14, sep=15, vocab_size=V, image_seq_length=N,
                         code_to_id=tuple(reversed(CODES)))
    g = SpanGrammar(layout, max_slots=16)
    for slot in range(n_text):
        g.add(slot, RequestOptions(mode=TEXT_ONLY), [1, 2, 3], 0)
    g.add(n_text, RequestOptions(mode=IMAGE_ONLY), [1, 2, 3], 0)  # forced BOI
    g.add(n_text + 1, RequestOptions(mode=IMAGE_ONLY, image_temperature=0.0), [1, BOI], 1)  # inside a span
    out = g.apply(torch.randn(n_text + 2, V), np.arange(n_text + 2, dtype=np.int64))
    for row in out[:n_text]:
        assert allowed(row) == set(TEXT)
    assert allowed(out[n_text]) == {BOI}
    [code] = allowed(out[n_text + 1])
    assert code in CODES


@pytest.mark.parametrize("on_device", [False, True])
def test_a_masked_edit_writes_the_kept_codes_and_samples_the_rest(on_device):
    """Kept cells are forced to their code, the others sampled among the codes, beside an unmasked image and
    text; the host path and the device path (Model Runner V2's) write the same."""
    kept = (CODES[1], -1, CODES[3], -1)
    g = grammar(RequestOptions(mode=IMAGE_ONLY, image_temperature=1.0, kept_codes=kept, seed=1),
                RequestOptions(mode=IMAGE_ONLY, image_temperature=1.0, seed=2), RequestOptions(mode=TEXT_ONLY))
    slots = np.array([0, 1, 2])
    written: list[list[int]] = [[], []]
    for _ in range(N + 2):  # BOI, N codes, EOI
        logits = torch.randn(3, V, generator=torch.Generator().manual_seed(len(written[0])))
        if on_device:
            pos, done = torch.from_numpy(g.state.pos[:2].copy()), torch.from_numpy(g.state.num_output[:2].copy())
            out = g.apply_on_device(logits, slots, np.array([0, 1]), pos, done)
        else:
            out = g.apply(logits, slots)
        tokens = [int(row.argmax()) for row in out]
        assert all(len(allowed(row)) == 1 for row in out[:2])
        written[0].append(tokens[0])
        written[1].append(tokens[1])
        commit(g, [0, 1, 2], tokens)
    assert written[0][0] == BOI and written[0][-1] == EOI
    image = written[0][1:-1]
    assert (image[0], image[2]) == (CODES[1], CODES[3]) and all(t in CODES for t in image)
    assert written[1][0] == BOI and all(t in CODES for t in written[1][1:-1])


def test_kept_codes_travel_in_extra_args_and_must_be_codes():
    options = RequestOptions(mode=IMAGE_ONLY, kept_codes=(4, -1, 5, -1))
    assert RequestOptions.from_extra_args(options.extra_args()) == options
    with pytest.raises(ValueError, match="image_keep"):
        RequestOptions.from_extra_args({"modalities": ["text"], "image_keep": [4, -1]})
    g = grammar(RequestOptions(mode=IMAGE_ONLY, kept_codes=(4, 99, BOI, -1)))
    assert g.state.kept[0].tolist() == [4, -1, -1, -1]  # ids that are not codes are sampled
