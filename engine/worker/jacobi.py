"""Speculative Jacobi decoding (SJD; Teng et al. 2024, arXiv 2410.01699) of image spans, exact, per batch row.

An image row keeps a window of draft codes after its committed tokens, each with the distribution q it was
drawn from. One forward over the row's next token and its drafts gives the target distribution p at every
window position (the span grammar's, after the row's image temperature, top-k and top-p). Drafts are tested
in order: draft x is kept with probability min(1, p(x) / q(x)); the first that is not is replaced by a draw
from norm(max(p - q, 0)), and the step commits the kept drafts and that draw (or, all kept, the token after
them drawn from its own p). Positions after the stop are redrawn from this step's p, which becomes their q;
new positions are drawn from the p of the row's furthest verified position (a neighbour's), else start as
uniform random codes (q one-hot). Every committed token is then distributed as p
given the tokens before it, whatever the drafts: the output distribution is that of one code per step,
and a greedy row (p one-hot) commits exactly the codes of one code per step. Forced positions (Lumina-mGPT's
and Emu3's size tokens, EOL, trailer; a masked edit's kept cells) are drafted as what the grammar forces,
and so always kept.

Why here and not in vLLM's rejection sampler: vLLM verifies drafts against its own p with a q the proposer
must hand over, while our span processor draws every image code itself (grammar, image sampling settings,
guidance, counter-based uniforms). This module decides each window position's token, and the adapter
(``engine/worker/jacobi_v1.py``) writes that decision as one-hot target logits, which vLLM's greedy and
random rejection paths both accept exactly as decided; vLLM keeps the slot handling (drafts scheduled,
written to the KV cache, rolled back when rejected, never read).

Randomness is counter-based on (request seed, output index, role), as image codes are
(``engine/worker/code_sampler.py``): each output index is tested once, when it is committed, so no pass
counter is needed, tensor-parallel ranks agree, and a redraw of a position uses the same uniform, which is
still independent of every token before it.

Drafts live in a ring per slot, indexed by output index modulo the window: kept drafts never move. The budget
of draft tokens per step is shared among the batch's image rows (:func:`share_budget`); a batch too full for
each row to draft a few decodes one code per step. Verification runs on the device with no host read; the
proposal reads the step's drafts back once, because vLLM's proposer hands drafts to its scheduler as host lists
(after its own read of the sampled tokens, which speculative decoding makes synchronous anyway).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from engine.shared.request_options import TEXT_ONLY, RequestOptions
from engine.worker.code_sampler import counter_uniforms, tempered_top_k
from engine.worker.guidance import Guidance
from engine.worker.slot_state import Field, SlotTable
from engine.worker.span_grammar import SpanGrammar
from engine.worker.transfers import to_device

_active: JacobiWindows | None = None  # this process's runner's windows (each tensor-parallel rank is a process)


def active() -> JacobiWindows | None:
    """The windows of this process's runner, None without SJD."""
    return _active


MIN_DRAFTS = 3  # the fewest drafts a row's equal share of the budget must give for the batch to draft at all

# Uniform roles, after the code sampler's rounds (0 .. CodeSampler.MAX_ATTEMPTS): one stream per use
ACCEPT, RESIDUAL, REDRAW, START = 17, 18, 19, 20


def _uniforms(seeds: np.ndarray, index: np.ndarray, role: int) -> np.ndarray:
    """The uniforms (float64, host) of ``role`` at each (request seed, output index)."""
    return counter_uniforms(seeds, index, np.full(len(index), role, dtype=np.int64))


def first_rows(num_drafts: np.ndarray) -> np.ndarray:
    """Per batch row, its first row in a speculative step's logits, where each row has its drafts' rows then
    its bonus row."""
    return np.cumsum(num_drafts + 1) - (num_drafts + 1)


def code_probs(x: torch.Tensor, temperature: np.ndarray, top_k: np.ndarray, top_p: np.ndarray) -> torch.Tensor:
    """Per row of code logits ``x`` (float32, rows x codebook), the distribution the code sampler draws from:
    temperature, top-k, then the nucleus (a code stays when the mass of strictly likelier codes is below top-p),
    renormalized; a row at temperature 0 is one-hot at its argmax, a row without a finite logit uniform."""
    device, width = x.device, x.shape[1]
    greedy = to_device(temperature == 0, device).unsqueeze(1)
    x = tempered_top_k(x, np.where(temperature > 0, temperature, 1.0).astype(np.float32), top_k)
    probs = x.softmax(dim=1)
    probs = torch.where(probs.sum(dim=1, keepdim=True) > 0, probs, 1.0 / width)  # all -inf: NaN rows
    if (top_p < 1).any() and device.type == "cpu":  # no sort on a CPU (engine/worker/nucleus.py says why)
        from engine.worker.nucleus import nucleus_host

        probs = probs.contiguous()
        nucleus_host(probs.numpy(), top_p.astype(np.float32))
    elif (top_p < 1).any():
        desc = probs.sort(dim=1, descending=True).values
        above = desc.cumsum(dim=1) - desc  # at the first of equal codes: the mass strictly likelier
        kept = (above < to_device(top_p.astype(np.float32), device).unsqueeze(1)).sum(dim=1, keepdim=True)
        floor = desc.gather(1, (kept - 1).clamp_(min=0))
        probs = probs.masked_fill(probs < floor, 0.0)
        probs = probs / probs.sum(dim=1, keepdim=True)
    one_hot = torch.zeros_like(probs).scatter_(1, x.argmax(dim=1, keepdim=True), 1.0)
    return torch.where(greedy, one_hot, probs)


def residual_of(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """max(p - q, 0) per row (unnormalized: the inverse-CDF draw normalizes), what a position draws from where its
    draft is not kept; p itself where that is all zero (p = q: nothing is rejected but by rounding)."""
    residual = (p - q).clamp_(min=0.0)
    return torch.where(residual.sum(dim=1, keepdim=True) > 0, residual, p)


def inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One index per row of ``probs`` (rows need not sum to 1) at the row's uniform."""
    cdf = probs.cumsum(dim=1)
    target = (uniforms.to(cdf.dtype) * cdf[:, -1]).unsqueeze(1).contiguous()
    return torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_(max=probs.shape[1] - 1)


def share_budget(wants: np.ndarray, budget: int) -> np.ndarray:
    """Drafts per row: each row's want, capped at the one level that fits the wanting rows into ``budget``
    (water-filling: what a row does not want goes to the others). The cap depends on the wants alone, not on
    the rows' order, so a request's windows do not depend on where vLLM put it in the batch. Where the rows
    that want drafts would get fewer than ``MIN_DRAFTS`` each, none draft: a full batch decodes one code per
    step, as without SJD, rather than pay a window's verification for a draft or two a row."""
    wanting = np.sort(wants[wants > 0])
    if not len(wanting) or budget // len(wanting) < MIN_DRAFTS:
        return np.zeros_like(wants)
    below = np.concatenate([[0], np.cumsum(wanting)[:-1]])  # the wants of the rows below each, summed
    caps = (budget - below) // np.arange(len(wanting), 0, -1)  # the level if rows from each on share the rest
    over = np.flatnonzero(caps < wanting)
    return wants if not len(over) else np.minimum(wants, caps[over[0]])


def window_fields() -> dict[str, Field]:
    """Per-slot window bookkeeping on the host; the drafts themselves are on the device (:class:`JacobiWindows`)."""
    return {
        "window": Field(np.int64, 1),  # the request's L: positions one step may verify (1: off)
        "lo": Field(np.int64, 0),  # output indices [lo, hi) hold drafts in the ring
        "hi": Field(np.int64, 0),
    }


@dataclass(slots=True)
class _Verified:
    """One step's window rows, kept from verification to the next proposal: their p is the redraws'."""

    slots: np.ndarray  # per window row: its slot
    index: np.ndarray  # its output index
    probs: torch.Tensor  # p over the codebook
    forced: torch.Tensor  # the grammar's token there, -1 where a code is drawn


@dataclass(slots=True)
class Decisions:
    """What :meth:`JacobiWindows.verify` decided for one step's image windows (device tensors but ``ahead``)."""

    ahead: np.ndarray  # per batch row: the drafts before the row it samples (its bonus row); 0 where undecided
    tokens: torch.Tensor  # per image row's draft row: the token it takes, which is the draft where kept
    drafts: torch.Tensor  # per such row: the draft
    slots: torch.Tensor  # per window row (drafts and bonus rows): its slot (= batch row)
    offsets: torch.Tensor  # its place in the window
    targets: torch.Tensor  # the window rows that are draft rows, in the order of ``tokens``
    bonus: torch.Tensor  # per window row: its slot's drafts (the offset of its bonus row)
    leaders: torch.Tensor  # guided rows (batch rows) whose companions write what they write
    companions: torch.Tensor  # their companions' batch rows

    def settle(self, output: torch.Tensor) -> torch.Tensor:
        """``output`` (batch x (drafts + 1), each row's sampled token first, -1 after) with the image rows as
        decided: the drafts kept, then the decided token at the first not kept, or the sampled (bonus) token
        when all were kept; guidance companions' rows become their rows'."""
        stop = self.bonus.clone()  # per window row, its slot's first draft not kept
        row_token = output[self.slots, 0].clone()  # the bonus token, at bonus rows
        row_token.index_copy_(0, self.targets, self.tokens.to(row_token.dtype))
        rejected = self.offsets.index_select(0, self.targets).masked_fill(self.tokens == self.drafts, 1 << 30)
        first = torch.full((output.shape[0],), 1 << 30, dtype=stop.dtype, device=stop.device)
        first.scatter_reduce_(0, self.slots.index_select(0, self.targets), rejected, "amin")
        stop = torch.minimum(stop, first.index_select(0, self.slots))
        output.index_put_((self.slots, self.offsets), row_token.masked_fill(self.offsets > stop, -1))
        return output.index_copy_(0, self.companions, output.index_select(0, self.leaders))


class JacobiWindows:
    """Draft windows of the image rows of one runner's batch, their verification and their proposal."""

    def __init__(self, grammar: SpanGrammar, guidance: Guidance, max_slots: int, width: int, budget: int,
                 default_window: int, catch_up: Callable[[int], None]) -> None:
        """``catch_up(n)``: has the grammar account the tokens committed since, for the batch's first n slots.
        The newest instance is this process's (:func:`active`): a runner builds its processors again when it
        rebuilds its batch."""
        global _active
        _active = self
        self.catch_up, self.guidance = catch_up, guidance
        self.grammar, self.state, self.device = grammar, grammar.state, grammar.device
        self.width, self.budget, self.default_window = width, budget, default_window
        self.slots = SlotTable(window_fields(), max_slots, self.device)
        layout = grammar.layout
        codes = len(layout.code_to_id)
        self._code_ids = layout.code_ids().to(self.device)
        self._to_code = layout.code_index_table().to(self.device)
        self.tokens = torch.full((max_slots, width), -1, dtype=torch.long, device=self.device)
        self.dense = torch.zeros((max_slots, width), dtype=torch.bool, device=self.device)
        self.q = torch.zeros((max_slots, width, codes), dtype=torch.float32, device=self.device)
        self.ahead = np.zeros(max_slots, dtype=np.int64)  # per slot: drafts this step verifies before its bonus row
        self._verified: _Verified | None = None

    def add(self, slot: int, options: RequestOptions, drafts: bool) -> None:
        """A request entering ``slot``; ``drafts``: whether it may draft (a guidance companion takes its row's)."""
        window = self.default_window if options.jacobi_window is None else options.jacobi_window
        self.slots.set(slot, window=window if drafts and options.mode != TEXT_ONLY else 1, lo=0, hi=0)

    def remove(self, slot: int) -> None:
        self.slots.remove(slot)

    def move(self, src: int, dst: int, swap: bool) -> None:
        self.slots.move(src, dst, swap)
        for t in (self.tokens, self.dense, self.q):
            t[[dst, src]] = t[[src, dst]]

    def verify(self, logits: torch.Tensor, num_drafts: np.ndarray, draft_ids: torch.Tensor) -> Decisions | None:
        """Decide the window positions of one step.

        ``logits``: the step's rows, per slot in batch order its ``num_drafts`` draft rows then its bonus row;
        ``draft_ids`` (device): the scheduled drafts, flat. None when no image row drafts; sets :attr:`ahead`,
        which the span processor adds to the positions of those rows' bonus rows, drawn there as without drafts.
        """
        state = self.state
        slots = np.arange(len(num_drafts))
        drafting = (num_drafts > 0) & (state.pos[slots] >= 0) & (self.slots.window[slots] > 1)
        self.ahead[:] = 0
        self._verified = None
        if not drafting.any():
            return None
        self.ahead[slots[drafting]] = num_drafts[drafting]
        first_row = first_rows(num_drafts)
        first_draft = np.cumsum(num_drafts) - num_drafts
        sizes = num_drafts[drafting] + 1
        row_slot = np.repeat(slots[drafting], sizes)
        offset = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        rows = first_row[row_slot] + offset
        bonus = offset == num_drafts[row_slot]
        index = state.num_output[row_slot] + offset
        forced = self.grammar.rules.forced_token(row_slot, self._dev(state.pos[row_slot] + offset))
        x = self._code_logits(logits, rows)
        # guided rows: each window row against its companion's at the same offset (the scheduler gives both
        # the same drafts), as the span processor guides a row's one token
        cond, companion = self.guidance.pairs(slots)
        companion_of = np.full(len(slots), -1, dtype=np.int64)
        companion_of[cond] = companion
        guided = np.flatnonzero(companion_of[row_slot] >= 0)
        if len(guided):
            guided_t = self._dev(guided)
            uncond = self._code_logits(logits, first_row[companion_of[row_slot[guided]]] + offset[guided])
            combined = self.guidance.guided(x.index_select(0, guided_t), uncond, row_slot[guided],
                                            torch.ones(len(guided), dtype=torch.bool, device=self.device))
            x.index_copy_(0, guided_t, combined)
        probs = code_probs(x, state.temperature[row_slot], state.top_k[row_slot], state.top_p[row_slot])
        self._verified = _Verified(row_slot, index, probs, forced)
        # the drafts' rows: what was drafted, what our ring says it was drawn from
        target = ~bonus
        t_slot, t_index, targets = row_slot[target], index[target], self._dev(np.flatnonzero(target))
        draft = draft_ids.index_select(0, self._dev(first_draft[t_slot] + offset[target])).long()
        ring = self._dev(t_index % self.width)
        t_slot_d = self._dev(t_slot)
        in_ring = self._dev((t_index >= self.slots.lo[t_slot]) & (t_index < self.slots.hi[t_slot]))
        known = in_ring & (self.tokens[t_slot_d, ring] == draft)
        code = self._to_code[draft.clamp(min=0, max=len(self._to_code) - 1)].masked_fill(draft < 0, -1)
        is_code = code >= 0
        p = probs.index_select(0, targets)
        column = code.clamp(min=0).unsqueeze(1)
        one_hot = torch.zeros_like(p).scatter_(1, column, is_code.float().unsqueeze(1))
        q = torch.where((known & self.dense[t_slot_d, ring]).unsqueeze(1), self.q[t_slot_d, ring], one_hot)
        q = torch.where(known.unsqueeze(1), q, 0.0)  # a draft we did not draw: tested as if never likely
        seeds = state.seed[t_slot]
        u = self._dev(_uniforms(seeds, t_index, ACCEPT).astype(np.float32))
        p_x, q_x = p.gather(1, column).squeeze(1), q.gather(1, column).squeeze(1)
        keep = known & is_code & (u * q_x < p_x)
        drawn = self._code_ids[inverse_cdf(residual_of(p, q), self._dev(_uniforms(seeds, t_index, RESIDUAL)))]
        t_forced = forced.index_select(0, targets)
        decided = torch.where(t_forced >= 0, t_forced, torch.where(keep, draft, drawn))
        leaders = np.flatnonzero((companion_of >= 0) & drafting)  # companions sample at their rows' bonus rows
        ahead = self.ahead[slots].copy()
        ahead[companion_of[leaders]] = num_drafts[leaders]
        return Decisions(ahead, decided, draft, self._dev(row_slot), self._dev(offset),
                         targets, self._dev(num_drafts[row_slot]), self._dev(leaders),
                         self._dev(companion_of[leaders]))

    def _code_logits(self, logits: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        """Rows ``rows`` of ``logits`` over the codebook (float32, a copy)."""
        x = logits.index_select(0, self._dev(rows))
        cols = self.grammar.sampler.code_cols
        return (x[:, cols] if isinstance(cols, slice) else x.index_select(1, cols)).float()

    def propose(self, num_slots: int) -> list[list[int]]:
        """Drafts for each of the batch's first ``num_slots`` slots' next step, from their committed tokens as
        the span grammar now places them: redraws of last step's window rows beyond what was committed, drafts
        kept from before, and new ones, as many as the row's window and the budget allow (``[]`` for rows
        outside image spans)."""
        state, table = self.state, self.slots
        verified, self._verified = self._verified, None
        slots = np.arange(num_slots)
        pos = state.pos[slots]
        left = self.grammar.span_lengths(slots) - 1 - pos  # positions before the span's EOI
        wants = np.where(pos >= 0, np.minimum(table.window[slots] - 1, left), 0).clip(min=0)
        counts = share_budget(wants, self.budget)
        start = state.num_output[slots]
        stale = (table.lo[slots] > start) | (table.hi[slots] < start)
        table.lo[slots] = start
        table.hi[slots] = np.where(stale, start, table.hi[slots])
        if verified is not None:
            self._redraw(verified, start)
        drafting = slots[counts > 0]
        if not len(drafting):
            return [[] for _ in slots]
        self._start_new(drafting, start[drafting], counts[drafting], verified)
        at = start[drafting, None] + np.arange(counts.max())
        drafts = self.tokens[self._dev(drafting)[:, None], self._dev(at % self.width)].cpu().numpy()
        out: list[list[int]] = [[] for _ in slots]
        for i, slot in enumerate(drafting):
            out[slot] = drafts[i, :counts[slot]].tolist()
        return out

    def _redraw(self, verified: _Verified, start: np.ndarray) -> None:
        """Last step's window rows past their slot's committed tokens: redrawn from their p (their new q)."""
        past = verified.index >= start[verified.slots]
        if not past.any():
            return
        pick = self._dev(np.flatnonzero(past))
        slot, index = verified.slots[past], verified.index[past]
        probs = verified.probs.index_select(0, pick)
        forced = verified.forced.index_select(0, pick)
        seeds = self.state.seed[slot]
        drawn = self._code_ids[inverse_cdf(probs, self._dev(_uniforms(seeds, index, REDRAW)))]
        at = (self._dev(slot), self._dev(index % self.width))
        self.tokens.index_put_(at, torch.where(forced >= 0, forced, drawn))
        self.dense.index_put_(at, forced < 0)
        self.q.index_put_(at, probs)
        np.maximum.at(self.slots.hi, slot, index + 1)

    def _start_new(self, slots: np.ndarray, start: np.ndarray, counts: np.ndarray,
                   verified: _Verified | None) -> None:
        """New drafts where the windows of ``slots`` reach past their drafts: drawn from the p of the slot's
        furthest position verified last step (its q), which is where a neighbouring code was likeliest, else
        uniform random codes (q one-hot); forced tokens where the grammar forces one."""
        hi = self.slots.hi[slots]
        need = np.maximum(start + counts - hi, 0)
        if not need.any():
            return
        slot = np.repeat(slots, need)
        index = np.repeat(hi, need) + np.arange(need.sum()) - np.repeat(np.cumsum(need) - need, need)
        state, codes = self.state, len(self.grammar.layout.code_to_id)
        forced = self.grammar.rules.forced_token(slot, self._dev(state.pos[slot] + index - state.num_output[slot]))
        pick = _uniforms(state.seed[slot], index, START)
        token = self._code_ids[self._dev(np.minimum((pick * codes).astype(np.int64), codes - 1))]
        at = (self._dev(slot), self._dev(index % self.width))
        dense = torch.zeros_like(forced, dtype=torch.bool)
        if verified is not None:
            furthest = np.full(len(self.slots.window), -1, dtype=np.int64)
            np.maximum.at(furthest, verified.slots, np.arange(len(verified.slots)))
            source = furthest[slot]
            probs = verified.probs.index_select(0, self._dev(source.clip(min=0)))
            dense = self._dev(source >= 0) & (forced < 0)
            token = torch.where(dense, self._code_ids[inverse_cdf(probs, self._dev(pick))], token)
            self.q.index_put_(at, probs)
        self.tokens.index_put_(at, torch.where(forced >= 0, forced, token))
        self.dense.index_put_(at, dense)
        self.slots.hi[slots] = np.maximum(hi, start + counts)

    def _dev(self, array: np.ndarray) -> torch.Tensor:
        return to_device(np.ascontiguousarray(array), self.device)
