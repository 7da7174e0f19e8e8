"""vLLM's speculative path played by hand around the real V1 span processor with SJD on
(``engine/worker/jacobi.py``, ``engine/worker/jacobi_v1.py``), so that SJD's output can be sampled without an
engine: per step the drafts proposed last step (maybe trimmed, as vLLM's token budget does), the rows of a fake
model, verification, each request's sampled row (an image row's bonus row) through the processor, then
``Decisions.settle``, as ``JacobiRejectionSampler.forward`` does; finished requests leave and waiting ones take
their rows, as in vLLM's persistent batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from engine.shared.jacobi import BUDGET_KEY, MAX_WINDOW, PROPOSER
from engine.worker.jacobi import first_rows
from engine.worker.runner_v1 import ChameleonSpanLogitsProcessorV1

PROMPT = [1]


@dataclass
class Request:
    """One image request: its live output list (the processor holds a reference) and its next drafts."""

    params: SamplingParams
    output: list[int] = field(default_factory=list)
    drafts: list[int] = field(default_factory=list)
    steps: int = 0  # forward passes it took part in


def sjd_config(model_dir: str, slots: int, budget: int) -> SimpleNamespace:
    """The parts of a ``VllmConfig`` the V1 processor reads, with SJD's speculative config."""
    spec = SimpleNamespace(method="custom_class", model=PROPOSER, num_speculative_tokens=MAX_WINDOW - 1)
    return SimpleNamespace(model_config=SimpleNamespace(model=model_dir,
                                                        architectures=["ChameleonForConditionalGeneration"]),
                           scheduler_config=SimpleNamespace(max_num_seqs=slots), speculative_config=spec,
                           additional_config={BUDGET_KEY: budget})


class JacobiLoop:
    """Runs requests to their EOI on a fake model whose row logits are ``table[input token]`` (vocab x vocab):
    each row's logits depend on the token before the position it predicts, committed or drafted."""

    def __init__(self, model_dir: str, table: torch.Tensor, eoi: int, slots: int, budget: int,
                 trim: np.random.Generator | None = None) -> None:
        """``trim``: when given, each step keeps a random prefix of each request's drafts (vLLM's token budget)."""
        self.table, self.eoi, self.slots, self.trim = table, eoi, slots, trim
        self.processor = ChameleonSpanLogitsProcessorV1(sjd_config(model_dir, slots, budget),
                                                        torch.device("cpu"), False)
        self.windows = self.processor.jacobi

    def run(self, params: list[SamplingParams]) -> list[Request]:
        """Every request's output up to its EOI, in the order of ``params``."""
        requests = [Request(p) for p in params]
        waiting = list(reversed(requests))
        batch: list[Request | None] = []
        holes: list[int] = []
        while waiting or batch:
            added, moved = [], []
            while waiting and (holes or len(batch) < self.slots):  # vLLM fills holes first
                request = waiting.pop()
                if holes:
                    slot = holes.pop(0)
                    batch[slot] = request
                else:
                    slot = len(batch)
                    batch.append(request)
                added.append((slot, request.params, PROMPT, request.output))
            removed = list(holes)
            for hole in holes:  # then condenses: the last rows move into the holes left
                while batch and batch[-1] is None:
                    batch.pop()
                if hole < len(batch):
                    batch[hole] = batch.pop()
                    moved.append((len(batch), hole, MoveDirectionality.UNIDIRECTIONAL))
            while batch and batch[-1] is None:
                batch.pop()
            if not batch:
                break
            self.processor.update_state(BatchUpdate(len(batch), removed, added, moved))
            self._step(batch)
            holes = [slot for slot, r in enumerate(batch) if self.eoi in r.output]
            for slot in holes:
                batch[slot] = None
        return requests

    def _step(self, batch: list[Request]) -> None:
        """One forward pass over ``batch`` (slot i is ``batch[i]``) and what vLLM does with its logits."""
        n = len(batch)
        drafts = [r.drafts if self.trim is None else r.drafts[:self.trim.integers(len(r.drafts) + 1)] for r in batch]
        num_drafts = np.array([len(d) for d in drafts], dtype=np.int64)
        inputs = [t for r, d in zip(batch, drafts) for t in ([(PROMPT + r.output)[-1]] + d)]
        logits = self.table[torch.tensor(inputs)].clone()  # per slot: its draft rows, then its bonus row
        draft_ids = torch.tensor([t for d in drafts for t in d], dtype=torch.long)
        self.windows.catch_up(n)  # JacobiRejectionSampler.forward
        decided = self.windows.verify(logits, num_drafts, draft_ids)
        ahead = np.zeros(n, dtype=np.int64) if decided is None else decided.ahead
        sampled = self.processor.apply(logits[torch.from_numpy(first_rows(num_drafts) + ahead)]).argmax(dim=1)
        output = torch.full((n, int(num_drafts.max()) + 1), -1, dtype=torch.long)
        output[:, 0] = sampled  # rows whose drafts nobody decided keep their first row's token
        if decided is not None:
            decided.settle(output)
        for request, row in zip(batch, output.tolist()):
            request.output.extend(t for t in row if t >= 0)
            request.steps += 1
        self.windows.catch_up(n)  # JacobiProposer.propose
        for request, proposed in zip(batch, self.windows.propose(n)):
            request.drafts = proposed
