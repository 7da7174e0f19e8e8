"""Device check for a lent GPU: the span grammar, the nucleus draw, speculative Jacobi decoding's step (verify,
settle, propose), the V2 adapter and the VQGAN on the device, each timed, probed for host syncs and compared
with the CPU. (Guidance adds no attention of its own: a guided
row's unconditional companion is a row of vLLM's forward, ``engine/worker/guidance.py``.)

Written for the machine issue 21 lends: torch and numpy, no vLLM, maybe no transformers or numba, nothing
to install. So without transformers the token layout reads this script's stand-in checkpoint's processor file as
JSON, and without numba a stand-in ``njit`` runs engine/worker/nucleus.py's host loops as plain Python (on a
GPU they only serve the CPU side); the V2 adapter reads the
step's raw logits from a stand-in model, and needs vLLM's pure-Python interface module: from an installed
vllm, or from ``--vllm-src DIR``, a folder holding the vllm package's .py files (~39 MB; bench/out is
git-ignored, so carry it)::

    mkdir -p bench/out/vllm_src && (cd .venv/lib/python3.11/site-packages &&
        find vllm -name '*.py' -exec cp --parents -t "$OLDPWD/bench/out/vllm_src" {} +)

A sync is recorded, not failed: today's code syncs in places, and this says where. Every check runs on the
CPU too (``--device cpu``, the default without CUDA), where the sync probe and the CPU comparison say why
they are skipped. Exit status 1 when a check failed; skips are fine.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
import traceback
import types
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cache, partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
PARTS = ("grammar", "nucleus", "sjd", "v2", "vqgan")
SYNC_MESSAGE = "called a synchronizing CUDA operation"  # torch's words under set_sync_debug_mode
NO_CPU_COMPARISON = "skip: the device is the CPU"
DRAW_AGREEMENT = 0.9  # a draw may pick a neighbouring code where float sums round apart; a bug misses more
CODE_AGREEMENT = 0.99  # VQGAN codes in strict fp32: a near-tie of codebook distances may flip
PIXEL_TOLERANCE = 1 / 255  # half an 8-bit level on the [-1, 1] scale: the PNG would not change


class Skip(Exception):
    """A check that cannot run here; the message says why."""


@dataclass
class Row:
    """One line of the report. ``sync``: "none", where the first sync raised, or why it was not probed."""

    part: str = ""
    status: str = "pass"  # pass / fail / skip
    ms: float | None = None
    unit: str = "ms/call"
    sync: str = ""
    sync_sites: list[str] = field(default_factory=list)  # every sync of one call: "file:line (function) xN"
    vs_cpu: str = ""
    detail: str = ""

    def flag(self, problems: list[str]) -> None:
        """Fail the row for rows that break the grammar, naming the first few."""
        if problems:
            self.status = "fail"
            self.detail += f"; breaks the grammar: {', '.join(problems[:8])}"


@dataclass(frozen=True)
class Setup:
    device: torch.device
    rows: int  # batch rows of the grammar, nucleus and V2 checks
    repeats: int  # timed calls after warm-up
    model_dir: Path  # whose token layout the grammar uses: --model, else a Chameleon-shaped stand-in
    model: Path | None  # --model: its VQGAN too
    vllm_src: Path | None
    image_batches: tuple[int, ...]


# ---- timing, sync probes, loading ----------------------------------------------------------------

def ms_per_call(call: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Mean time of ``call`` after warm-up; on a GPU by CUDA events (the stream's time, host gaps in it)."""
    for _ in range(warmup):
        call()
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        return (time.perf_counter() - start) * 1e3 / repeats
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    begin.record()
    for _ in range(repeats):
        call()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / repeats


def fresh(tensor: torch.Tensor, n: int) -> Iterator[torch.Tensor]:
    """``n`` copies made ahead for calls that write their input, so that no timed call pays for a copy."""
    return iter([tensor.clone() for _ in range(n)])


def code_site(frames: list[traceback.FrameSummary]) -> str:
    """Where something happened: the innermost frame of this checkout outside this script, else the
    innermost of this checkout, else the innermost."""
    here = Path(__file__).resolve()
    ours = [f for f in frames if Path(f.filename).resolve().is_relative_to(REPO)]
    frame = ([f for f in ours if Path(f.filename).resolve() != here] or ours or frames)[-1]
    path = Path(frame.filename).resolve()
    return f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{frame.lineno} ({frame.name})"


def probe_sync(call: Callable[[], object], device: torch.device) -> tuple[str, list[str]]:
    """Run ``call`` once under ``set_sync_debug_mode("error")``: "none", or where it raised on a sync,
    with every sync of a second call in "warn" mode."""
    if device.type != "cuda":
        return "skip: no CUDA device (sync debug mode needs one)", []
    torch.cuda.synchronize(device)
    try:
        torch.cuda.set_sync_debug_mode("error")
        call()
        return "none", []
    except RuntimeError as e:
        if SYNC_MESSAGE not in str(e):
            raise
        first = f"raises at {code_site(traceback.extract_tb(e.__traceback__))}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return first, sync_sites(call)


def sync_sites(call: Callable[[], object]) -> list[str]:
    """Every sync of one call, from "warn" mode's warnings and the Python stack at each."""
    sites: Counter[str] = Counter()

    def note(message: Warning | str, *_: object, **__: object) -> None:
        if SYNC_MESSAGE in str(message):
            sites[code_site(traceback.extract_stack()[:-1])] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = note
        torch.cuda.set_sync_debug_mode("warn")
        try:
            call()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [f"{site} x{n}" for site, n in sites.items()]


@contextmanager
def strict_fp32() -> Iterator[None]:
    """TF32 off for matmuls and convolutions, so that a CPU comparison tests the code, not TF32's rounding."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def numba_or_stand_in() -> str:
    """numba's version; without numba, a stand-in whose ``njit`` leaves functions as written."""
    try:
        import numba
    except ImportError as e:
        stand_in = types.ModuleType("numba")
        stand_in.njit = lambda *_, **__: (lambda fn: fn)
        sys.modules["numba"] = stand_in
        return f"absent ({e}): a stand-in njit runs engine/worker/nucleus.py's host loops as plain Python"
    return numba.__version__


def transformers_or_stand_in() -> str:
    """transformers' version; without transformers, a stand-in for ``engine/shared/processor_settings.py``, whose
    loaders are transformers': it reads the processor files that this script's own stand-in checkpoint writes."""
    try:
        import transformers
    except ImportError as e:
        def processor_settings(model_dir: Path) -> dict:
            path = Path(model_dir) / "processor_config.json"
            return json.loads(path.read_text()) if path.is_file() else {}

        stand_in = types.ModuleType("engine.shared.processor_settings")
        stand_in.processor_settings = processor_settings
        stand_in.image_processor_settings = lambda model_dir: processor_settings(model_dir).get("image_processor")
        sys.modules[stand_in.__name__] = stand_in
        return f"absent ({e}): the token layout reads the stand-in checkpoint's processor_config.json as JSON"
    return transformers.__version__


def chameleon_stand_in(dst: Path) -> Path:
    """A folder with only what the token layout reads, shaped as facebook/chameleon-7b's vocabulary (65,536
    ids, 8,192 codes from id 4, EOI 8196, BOI 8197; 1,024 codes an image): the default without --model."""
    from engine.shared.families.base import CHAMELEON_ARCHITECTURE as ARCHITECTURE
    from engine.shared.vocab import BOI_NAME, EOI_NAME, IMAGE_PLACEHOLDER_NAME, SEP_NAME, code_name

    vocab = {code_name(i): 4 + i for i in range(8192)}
    vocab |= {EOI_NAME: 8196, BOI_NAME: 8197, SEP_NAME: 8710, IMAGE_PLACEHOLDER_NAME: 8711}
    config = {"vocabulary_map": vocab, "vocab_size": 65536, "architectures": [ARCHITECTURE]}
    (dst / "config.json").write_text(json.dumps(config))
    (dst / "processor_config.json").write_text(json.dumps({"image_seq_length": 1024}))
    return dst


@cache
def token_layout(model_dir: Path) -> Any:
    from engine.shared.vocab import TokenLayout

    return TokenLayout.from_checkpoint(model_dir)


@dataclass(frozen=True)
class Kind:
    """A kind of batch row: its request's extra_args and seed, what it wrote so far ("text"; "fresh":
    nothing; "span": a few codes of an image; "span-end": every code), what its next token must be ("text":
    BOI forbidden too; "text+boi"; "boi"; "eoi"; "greedy": the likeliest code; "code": a drawn code), and a
    logit bias on the first image code (the V2 adapter adds it to the model's logits it draws codes from)."""

    extra_args: dict
    seed: int | None
    history: str
    expect: str
    bias: float = 0.0


KINDS = {
    "text": Kind({"modalities": ["text"]}, 1, "text", "text"),
    "interleaved": Kind({"modalities": ["text", "image"]}, 2, "text", "text+boi"),
    "boi": Kind({"modalities": ["image"]}, 3, "fresh", "boi"),
    "eoi": Kind({"modalities": ["text", "image"]}, 4, "span-end", "eoi"),
    "greedy": Kind({"modalities": ["image"], "image_temperature": 0.0}, 5, "span", "greedy"),
    "hot": Kind({"modalities": ["image"]}, 6, "span", "code"),  # Anole's image sampling: 0.7, top-p 0.9
    "hot-k": Kind({"modalities": ["text", "image"], "image_temperature": 1.0, "image_top_k": 2000,
                   "image_top_p": 1.0}, 7, "span", "code", bias=3.0),  # Lumina-mGPT's image top-k
    "unseeded": Kind({"modalities": ["image"]}, None, "span", "code"),  # a seed from numpy's generator
}
WORKLOADS = {"text": ("text", "interleaved"), "forced": ("boi", "eoi"),
             "mixed": ("text", "interleaved", "boi", "eoi", "greedy", "hot", "hot-k"), "image": ("unseeded",)}


@dataclass(frozen=True)
class Request:
    kind: Kind
    prompt: list[int]
    output: list[int]  # written so far
    params: SimpleNamespace  # what the adapters read of vLLM's SamplingParams: extra_args, seed, logit_bias,
    # max_tokens


def requests(workload: str, n: int, layout: Any) -> list[Request]:
    """``n`` rows cycling through the workload's kinds, each seeded kind with a seed of its own."""
    codes = torch.randint(0, layout.codebook_size, (layout.span.native_grid,) * 2,
                          generator=torch.Generator().manual_seed(0))
    image = layout.image_span(codes)
    text = [t for t in range(layout.vocab_size) if not layout.is_span_token(t)][-3:]
    written = {"text": text, "fresh": [], "span": image[:8], "span-end": image[:-1]}
    kinds = [KINDS[WORKLOADS[workload][i % len(WORKLOADS[workload])]] for i in range(n)]
    return [Request(kind, text, written[kind.history], SimpleNamespace(
                extra_args=kind.extra_args, seed=None if kind.seed is None else kind.seed + i,
                logit_bias={layout.code_to_id[0]: kind.bias} if kind.bias else None, max_tokens=64))
            for i, kind in enumerate(kinds)]


def scattered(n: int) -> np.ndarray:
    """Slots of ``n`` rows in a shuffled order, as a live batch maps them."""
    return np.random.default_rng(0).permutation(n).astype(np.int64)


def random_logits(rows: int, vocab: int, seed: int) -> torch.Tensor:
    return 3 * torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed))


def misfits(out: torch.Tensor, logits: torch.Tensor, reqs: list[Request], layout: Any) -> list[str]:
    """Rows of processed ``out`` (on the CPU) that break their kind's grammar, given the ``logits`` they
    were made from."""
    span, codes = torch.tensor(sorted(layout.span_token_ids())), layout.code_ids()
    bad = []
    for r, req in enumerate(reqs):
        finite, expect = torch.isfinite(out[r]), req.kind.expect
        if expect.startswith("text"):
            banned = torch.zeros_like(finite)
            banned[span] = True
            banned[layout.boi] = expect == "text"
            ok = not finite[banned].any() and torch.equal(out[r][~banned], logits[r][~banned])
        else:
            wanted = {"boi": layout.boi, "eoi": layout.eoi, "greedy": int(codes[logits[r, codes].argmax()])}
            pick = int(out[r].argmax())
            ok = int(finite.sum()) == 1 and (pick == wanted[expect] if expect in wanted
                                             else pick in layout.code_of)
        if not ok:
            bad.append(f"row {r} ({expect})")
    return bad


def tally(dev_out: torch.Tensor, cpu_out: torch.Tensor, reqs: list[Request], layout: Any) -> Counter[str]:
    """A device's processed rows against the CPU's: a row left with a drawn code should hold the same code
    (draws are counter-based on each request's seed), every other row must be equal."""
    counts: Counter[str] = Counter()
    for r, req in enumerate(reqs):
        pick = int(cpu_out[r].argmax())
        one = int(torch.isfinite(cpu_out[r]).sum()) == 1
        if req.kind.expect != "greedy" and one and pick in layout.code_of:
            counts["draws"] += 1
            counts["same"] += int(dev_out[r].argmax()) == pick
        else:
            counts["exact"] += 1
            counts["unequal"] += not torch.equal(dev_out[r], cpu_out[r])
    return counts


def judge(row: Row, counts: Counter[str]) -> None:
    """Write :func:`tally`'s counts into ``row``, failing it for an unequal row or too few equal draws."""
    row.vs_cpu = (f"{counts['exact'] - counts['unequal']}/{counts['exact']} exact rows equal, "
                  f"{counts['same']}/{counts['draws']} draws the same code")
    if counts["unequal"] or counts["same"] < DRAW_AGREEMENT * counts["draws"]:
        row.status = "fail"


# ---- checks --------------------------------------------------------------------------------------

def grammar_for(reqs: list[Request], slots: np.ndarray, layout: Any, device: torch.device) -> Any:
    """A grammar holding ``reqs`` in ``slots``; numpy seeded first, as vLLM seeds every worker's, so that
    requests without a seed get the same one on the CPU and on the device."""
    from engine.shared.request_options import RequestOptions
    from engine.worker.span_grammar import SpanGrammar

    np.random.seed(0)
    grammar = SpanGrammar(layout, len(slots), device)
    for slot, req in zip(slots, reqs, strict=True):
        grammar.add(int(slot), RequestOptions.from_sampling_params(req.params), req.output, len(req.output))
    return grammar


def check_grammar(setup: Setup, workload: str) -> Row:
    """``SpanGrammar.apply`` over one batch: rows obey their grammar and match the CPU's; time, syncs."""
    dev, layout = setup.device, token_layout(setup.model_dir)
    reqs, slots = requests(workload, setup.rows, layout), scattered(setup.rows)
    logits = random_logits(setup.rows, layout.vocab_size, seed=0)
    grammar = grammar_for(reqs, slots, layout, dev)
    out = grammar.apply(logits.to(dev, copy=True), slots).cpu()
    row = Row(detail=f"rows {', '.join(WORKLOADS[workload])}; vocabulary {layout.vocab_size}")
    row.flag(misfits(out, logits, reqs, layout))
    row.vs_cpu = NO_CPU_COMPARISON
    if dev.type == "cuda":
        reference = grammar_for(reqs, slots, layout, torch.device("cpu"))
        judge(row, tally(out, reference.apply(logits.clone(), slots), reqs, layout))
    pool = fresh(logits.to(dev), setup.repeats + 4)
    row.ms = ms_per_call(lambda: grammar.apply(next(pool), slots), dev, setup.repeats)
    row.sync, row.sync_sites = probe_sync(lambda: grammar.apply(next(pool), slots), dev)
    return row


def in_nucleus(p: torch.Tensor, pick: int, top_p: float) -> bool:
    """Whether ``pick`` may be drawn at ``top_p``: likely at all, and likelier codes hold less than top-p."""
    return bool(p[pick] > 0) and (top_p >= 1 or float(p[p > p[pick]].double().sum()) < top_p + 1e-5)


def check_nucleus(setup: Setup) -> Row:
    """``draw_nucleus`` on the device: draws inside each row's nucleus, the CPU's draws; time, syncs."""
    from engine.worker.code_sampler import CodeSampler
    from engine.worker.nucleus import draw_nucleus

    dev, n, width = setup.device, setup.rows, token_layout(setup.model_dir).codebook_size
    probs = random_logits(n, width, seed=1).softmax(dim=1)
    uniforms = torch.rand(n, CodeSampler.MAX_ATTEMPTS + 1, generator=torch.Generator().manual_seed(2))
    top_p = np.resize(np.array([0.9, 1.0, 0.5, 0.99], dtype=np.float32), n)
    dev_probs, dev_uniforms = probs.to(dev), uniforms.to(dev)
    picked = draw_nucleus(dev_probs.clone(), dev_uniforms, top_p).cpu()
    row = Row(detail=f"{n} rows of {width} codes, top-p {sorted({round(float(p), 2) for p in top_p})}",
              vs_cpu=NO_CPU_COMPARISON)
    outside = [f"row {r}" for r in range(n) if not in_nucleus(probs[r], int(picked[r]), float(top_p[r]))]
    if outside:
        row.status, row.detail = "fail", row.detail + f"; drawn outside the nucleus: {', '.join(outside[:8])}"
    if dev.type == "cuda":
        same = int((draw_nucleus(probs.clone(), uniforms, top_p) == picked).sum())
        row.vs_cpu = f"{same}/{n} draws the same code"
        if same < DRAW_AGREEMENT * n:
            row.status = "fail"
    pool = fresh(dev_probs, setup.repeats + 4)
    row.ms = ms_per_call(lambda: draw_nucleus(next(pool), dev_uniforms, top_p), dev, setup.repeats)
    row.sync, row.sync_sites = probe_sync(lambda: draw_nucleus(next(pool), dev_uniforms, top_p), dev)
    return row


class JacobiStep:
    """One SJD step of image rows mid-span, as the V1 path runs it (``engine/worker/jacobi_v1.py``): verify the
    scheduled drafts against the step's logits, settle the sampled rows' outputs, propose the next drafts. The
    rows never advance (no tokens are committed between steps), so every step verifies and redraws full
    windows: the steady cost of a busy step. Rows are the batch's first slots, as the V1 runner keeps them."""

    def __init__(self, rows: int, budget: int, layout: Any, device: torch.device) -> None:
        from engine.shared.request_options import RequestOptions
        from engine.worker.guidance import Guidance
        from engine.worker.jacobi import JacobiWindows

        slots = np.arange(rows, dtype=np.int64)
        reqs = requests("image", rows, layout)  # seeds drawn from numpy, seeded alike on both devices
        self.grammar = grammar_for(reqs, slots, layout, device)
        self.windows = JacobiWindows(self.grammar, Guidance(rows), rows, 16, budget, 16, lambda n: None)
        for slot, req in zip(slots, reqs, strict=True):
            self.windows.add(int(slot), RequestOptions.from_sampling_params(req.params), drafts=True)
        self.rows, self.device = rows, device
        self.drafts = self.windows.propose(rows)
        self.logits = random_logits(rows * 16, layout.vocab_size, seed=3).to(device)

    def step(self) -> torch.Tensor:
        """One step; returns the settled outputs (rows x (drafts + 1), -1 past each row's stop)."""
        from engine.worker.transfers import to_device

        num = np.array([len(d) for d in self.drafts], dtype=np.int64)
        flat = to_device(np.array([t for d in self.drafts for t in d], dtype=np.int32), self.device)
        decided = self.windows.verify(self.logits[: self.rows + int(num.sum())], num, flat)
        output = torch.full((self.rows, int(num.max()) + 1), -1, dtype=torch.long, device=self.device)
        if decided is not None:
            decided.settle(output)
        self.drafts = self.windows.propose(self.rows)
        return output


def check_jacobi(setup: Setup, rows: int, budget: int) -> Row:
    """:class:`JacobiStep` on the device: the same decisions as the CPU's; time, syncs (the proposal reads the
    drafts back once by design: vLLM's V1 scheduler takes them as host lists)."""
    from engine.worker.jacobi import MIN_DRAFTS

    dev, layout = setup.device, token_layout(setup.model_dir)
    if budget // rows < MIN_DRAFTS:
        raise Skip(f"a budget of {budget} over {rows} rows drafts nothing (under {MIN_DRAFTS} a row)")
    run = JacobiStep(rows, budget, layout, dev)
    out = run.step().cpu()
    drafts = sum(map(len, run.drafts))
    row = Row(unit="ms/step", vs_cpu=NO_CPU_COMPARISON,
              detail=f"{rows} image rows, {drafts} drafts, budget {budget}, codebook {layout.codebook_size}")
    row.flag([f"row {r}" for r in range(rows) if any(int(t) not in layout.code_of for t in out[r] if t >= 0)])
    if dev.type == "cuda":
        reference = JacobiStep(rows, budget, layout, torch.device("cpu")).step()
        decided = reference >= 0
        same = int(((out == reference) & decided).sum())
        row.vs_cpu = f"{same}/{int(decided.sum())} window tokens decided the same"
        if same < DRAW_AGREEMENT * int(decided.sum()):
            row.status = "fail"
    row.ms = ms_per_call(run.step, dev, setup.repeats)
    row.sync, row.sync_sites = probe_sync(run.step, dev)
    return row


def v2_classes(vllm_src: Path | None) -> tuple[type, type, type]:
    """The V2 adapter and vLLM's state classes it reads: from an installed vllm, else from ``vllm_src``."""
    def load() -> tuple[type, type, type]:
        from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsContext, LogitsProcRequestState

        from engine.worker.runner_v2 import ChameleonSpanLogitsProcessorV2

        return ChameleonSpanLogitsProcessorV2, LogitsProcRequestState, LogitsContext

    try:
        return load()
    except ImportError as installed:
        if vllm_src is None:
            raise Skip(f"vllm not importable ({installed}); --vllm-src DIR names a folder holding the vllm "
                       "package's .py files") from None
        for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
            del sys.modules[name]
        sys.path.insert(0, str(vllm_src))
        try:
            return load()
        except ImportError as carried:
            raise Skip(f"vllm not importable: installed ({installed}); from {vllm_src} ({carried})") from None


class RawLogits:
    """The worker's model as the V2 adapter sees it: the step's logits before vLLM's penalties."""

    raw_logits: torch.Tensor | None = None


class V2Batch:
    """The V2 adapter over one batch, with the runner's state it reads (token history and lengths on the
    device) and the model's raw logits, committing each row's highest remaining logit every step as the
    runner commits its token. Numpy is seeded first, as in :func:`grammar_for`."""

    def __init__(self, classes: tuple[type, type, type], model_dir: Path, reqs: list[Request],
                 slots: np.ndarray, device: torch.device, capacity: int) -> None:
        processor_cls, state_cls, context_cls = classes
        n = len(reqs)
        self.state = state_cls(
            device=device, max_num_reqs=n, vocab_size=token_layout(model_dir).vocab_size,
            all_token_ids=SimpleNamespace(gpu=torch.zeros(n, capacity, dtype=torch.int32, device=device)),
            prompt_len=SimpleNamespace(np=np.zeros(n, dtype=np.int32)),
            prefill_len=SimpleNamespace(np=np.zeros(n, dtype=np.int32)),
            total_len=SimpleNamespace(gpu=torch.zeros(n, dtype=torch.int32, device=device)))
        # The adapter asks engine.worker.live.live_model() for the step's raw logits: this batch's stand-in model.
        self.model = RawLogits()
        np.random.seed(0)
        config = SimpleNamespace(model_config=SimpleNamespace(model=str(model_dir)), speculative_config=None)
        self.processor = processor_cls(config, self.state)
        for slot, req in zip(slots, reqs, strict=True):
            tokens = req.prompt + req.output
            self.state.prompt_len.np[slot], self.state.prefill_len.np[slot] = len(req.prompt), len(tokens)
            self.state.all_token_ids.gpu[slot, : len(tokens)] = torch.tensor(tokens, dtype=torch.int32)
            self.state.total_len.gpu[slot] = len(tokens)
            self.processor.add_request(int(slot), req.params)
        self.idx = torch.from_numpy(slots).to(device)
        zeros = torch.zeros_like(self.idx)
        # committed lengths, which the runner gives on the host (advanced in place by step)
        self.lengths = np.array([len(r.prompt) + len(r.output) for r in reqs], dtype=np.int32)
        self.ctx = context_cls(expanded_idx_mapping=self.idx, idx_mapping=self.idx, idx_mapping_np=slots,
                               expanded_local_pos=zeros, input_ids=zeros, pos=zeros,
                               seq_lens_upper_bound_np=self.lengths)

    def step(self, logits: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        """Process ``logits`` (written to) of a step whose model logits were ``raw`` (only read)."""
        from engine.worker.live import register_model

        self.model.raw_logits = raw
        register_model(self.model)
        out = self.processor.apply(logits, self.ctx)
        lengths = self.state.total_len.gpu[self.idx]
        self.state.all_token_ids.gpu[self.idx, lengths.long()] = out.argmax(dim=1).int()
        self.state.total_len.gpu[self.idx] = lengths + 1
        self.lengths += 1
        return out


def check_v2(setup: Setup, compared_steps: int = 6) -> Row:
    """The V2 adapter on device state over steps of a mixed batch, against the CPU's; time, syncs."""
    classes = v2_classes(setup.vllm_src)
    import vllm

    dev, layout = setup.device, token_layout(setup.model_dir)
    reqs, slots = requests("mixed", setup.rows, layout), scattered(setup.rows)
    capacity = max(len(r.prompt) + len(r.output) for r in reqs) + compared_steps + setup.repeats + 8
    steps = [random_logits(setup.rows, layout.vocab_size, seed) for seed in range(compared_steps)]
    batch = V2Batch(classes, setup.model_dir, reqs, slots, dev, capacity)
    outs = [batch.step(logits.to(dev, copy=True), logits.to(dev)).cpu() for logits in steps]
    row = Row(detail=f"{compared_steps} steps compared, then timed; vllm from {Path(vllm.__file__).parent}")
    row.flag(misfits(outs[0], steps[0], reqs, layout))
    row.vs_cpu = NO_CPU_COMPARISON
    if dev.type == "cuda":
        reference = V2Batch(classes, setup.model_dir, reqs, slots, torch.device("cpu"), capacity)
        judge(row, sum((tally(out, reference.step(logits.clone(), logits), reqs, layout)
                        for out, logits in zip(outs, steps, strict=True)), Counter()))
    raw = steps[0].to(dev)
    pool = fresh(raw, setup.repeats + 4)
    row.ms = ms_per_call(lambda: batch.step(next(pool), raw), dev, setup.repeats)
    row.sync, row.sync_sites = probe_sync(lambda: batch.step(next(pool), raw), dev)
    return row


@cache
def vqgan_on_cpu(model: Path | None) -> tuple[Any, str]:
    """--model's VQGAN (vqgan.ckpt beside it, else the encoder in model.safetensors), or a random one of
    engine/offline/tiny.py's shape with weights spread as tiny checkpoints spread them, so that codes vary."""
    from engine.frontend.vqgan import VQModel, load_hf_vqmodel, load_meta_vqgan

    if model is not None:
        ckpt = model / "vqgan.ckpt"
        return (load_meta_vqgan(ckpt), str(ckpt)) if ckpt.exists() else (load_hf_vqmodel(model), str(model))
    from engine.offline.random_weights import spread
    from engine.offline.tiny import TinySpec, _vqgan_config

    vq, gen = VQModel(_vqgan_config(TinySpec())), torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in vq.named_parameters():
            p.copy_(spread(name, p.shape, gen))
    return vq, "random (engine/offline/tiny.py's shape)"


def check_vqgan(setup: Setup, direction: str, batch: int) -> Row:
    """VQGAN encode or decode of ``batch`` images on the device: time per image, syncs, the CPU's result."""
    reference, source = vqgan_on_cpu(setup.model)
    if direction == "decode" and reference.decoder is None:
        raise Skip(f"{source} has no VQGAN decoder (no vqgan.ckpt beside it)")
    dev, cfg = setup.device, reference.config
    gen = torch.Generator().manual_seed(batch)
    if direction == "encode":  # smooth pictures, as photographs are
        small = torch.rand(batch, cfg.in_channels, 8, 8, generator=gen) * 2 - 1
        inputs = F.interpolate(small, size=(cfg.resolution,) * 2, mode="bicubic").clamp(-1, 1)
        shape, low, high = (batch, cfg.grid, cfg.grid), 0, cfg.n_embed - 1
    else:
        inputs = torch.randint(0, cfg.n_embed, (batch, cfg.grid, cfg.grid), generator=gen)
        shape, low, high = (batch, cfg.out_ch, cfg.resolution, cfg.resolution), -1, 1
    run, dev_inputs = getattr(copy.deepcopy(reference).to(dev), direction), inputs.to(dev)
    out = run(dev_inputs).cpu()
    row = Row(unit="ms/image", vs_cpu=NO_CPU_COMPARISON,
              detail=f"{source}: {cfg.resolution} px, {cfg.grid}x{cfg.grid} codes")
    if tuple(out.shape) != shape or not bool(((out >= low) & (out <= high)).all()):
        row.status, row.detail = "fail", row.detail + f"; output {tuple(out.shape)} (want {shape}) or its " \
                                                       f"values outside [{low}, {high}]"
    if dev.type == "cuda":
        with strict_fp32():
            ours, want = run(dev_inputs).cpu(), getattr(reference, direction)(inputs)
        if direction == "encode":
            share = float((ours == want).float().mean())
            row.vs_cpu, ok = f"{share:.2%} of codes equal (strict fp32)", share >= CODE_AGREEMENT
        else:
            diff = float((ours - want).abs().max())
            row.vs_cpu, ok = f"max pixel difference {diff:.1e} (strict fp32)", diff < PIXEL_TOLERANCE
        row.status = row.status if ok else "fail"
    row.ms = ms_per_call(lambda: run(dev_inputs), dev, setup.repeats) / batch
    row.sync, row.sync_sites = probe_sync(lambda: run(dev_inputs), dev)
    return row


# ---- running and reporting -----------------------------------------------------------------------

def checks(setup: Setup) -> list[tuple[str, str, Callable[[], Row]]]:
    """(part, name, check) for every check."""
    n = setup.rows
    return [
        *(("grammar", f"grammar {w} x{n}", partial(check_grammar, setup, w)) for w in WORKLOADS),
        ("nucleus", f"nucleus x{n}", partial(check_nucleus, setup)),
        ("sjd", "sjd step x1 window 16", partial(check_jacobi, setup, 1, 15)),
        ("sjd", f"sjd step x{n} 3 drafts", partial(check_jacobi, setup, n, 3 * n)),
        ("v2", f"v2 adapter mixed x{n}", partial(check_v2, setup)),
        *(("vqgan", f"vqgan {d} x{b}", partial(check_vqgan, setup, d, b))
          for d in ("encode", "decode") for b in setup.image_batches),
    ]


def run_check(name: str, check: Callable[[], Row]) -> Row:
    """One check, whatever happens in it: an error fails this row only, a missing package skips it."""
    started = time.perf_counter()
    try:
        row = check()
    except Skip as e:
        row = Row(status="skip", detail=str(e))
    except ModuleNotFoundError as e:
        row = Row(status="skip", detail=f"{e.name} not importable here ({e})")
    except Exception as e:  # noqa: BLE001 (this row's failure; the other checks still run)
        where = code_site(traceback.extract_tb(e.__traceback__))
        row = Row(status="fail", detail=f"{type(e).__name__}: {e} at {where}")
    row.part = name
    print(f"{name}: {row.status} ({time.perf_counter() - started:.1f} s)", file=sys.stderr, flush=True)
    return row


def print_table(rows: list[Row], notes: dict[str, str]) -> None:
    for key, value in notes.items():
        print(f"{key}: {value}")
    print(f"\n{'part':<24} {'status':<6} {'time':>17}  {'sync':<48} detail")
    for row in rows:
        took = "" if row.ms is None else f"{row.ms:.3f} {row.unit}"
        detail = "; ".join(s for s in (row.vs_cpu and f"vs CPU: {row.vs_cpu}", row.detail) if s)
        print(f"{row.part:<24} {row.status:<6} {took:>17}  {row.sync:<48} {detail}")
    for row in rows:
        if row.sync_sites:
            print(f"syncs of one call, {row.part}: {', '.join(row.sync_sites)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", type=Path, help="a Hugging Face-layout checkpoint: its token layout and "
                        "VQGAN (vqgan.ckpt beside it, else the encoder alone); default: stand-ins")
    parser.add_argument("--vllm-src", type=Path, help="a folder holding the vllm package's .py files, for "
                        "the V2 adapter where vllm is not installed")
    parser.add_argument("--rows", type=int, default=32, help="batch rows (grammar, nucleus, V2)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per check, after 2 warm-ups")
    parser.add_argument("--image-batches", type=int, nargs="+", default=[1, 8], help="VQGAN batch sizes")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--out", type=Path, help="write the report here as JSON")
    args = parser.parse_args(argv)
    if str(REPO) not in sys.path:  # engine/ from this checkout, however the script is started
        sys.path.insert(0, str(REPO))
    device = torch.device(args.device)
    notes = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
             "torch": f"{torch.__version__} (CUDA {torch.version.cuda})", "numba": numba_or_stand_in(),
             "transformers": transformers_or_stand_in()}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or chameleon_stand_in(Path(tmp))
        setup = Setup(device, args.rows, args.repeats, model_dir, args.model, args.vllm_src,
                      tuple(args.image_batches))
        rows = [run_check(name, check) for part, name, check in checks(setup) if part in args.parts]
    notes["elapsed"] = f"{time.perf_counter() - started:.1f} s"
    print_table(rows, notes)
    if args.out:
        args.out.write_text(json.dumps({**notes, "rows": [asdict(row) for row in rows]}, indent=1) + "\n")
    return 1 if any(row.status == "fail" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
