"""Engine steps per image written, counted where the front end receives each engine step's outputs.

Why there: AsyncLLM's per-request queue (``RequestOutputCollector``) merges the outputs a slow reader has not
taken, so the HTTP side cannot tell steps apart; ``OutputProcessor.process_outputs`` gets one
``EngineCoreOutput`` per request per engine step, its ``new_token_ids`` the tokens that step committed.

Counting rule, per request (each of n choices is a request of its own), for each image span in its stream:
a span's tokens are those after its BOI up to and including its EOI (codes, any size prefix or row ends, the
EOI); BOI is not one of them. A span step is a step that gave the request at least one of them: the first is
the step holding the first token after BOI, the last the one holding EOI. Each span step is observed with how
many of the span's tokens it gave (always 1 without speculative Jacobi decoding, a partly written span's
steps included); a span that reaches its EOI is observed with its number of span steps (without SJD, its
number of tokens: 1,025 for Chameleon's 32x32). One step holding EOI, text and a BOI counts for both spans.

Version-pinned like ``detokenize.py``: vLLM 0.32's ``OutputProcessor.process_outputs``, which trims tokens
past a stop string in place and drops finished requests from ``request_states``, and ``abort_requests``,
which returns the aborted requests' ids.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Container, Iterable, Sequence
from typing import Any, Protocol

from engine.shared.vocab import TokenLayout

logger = logging.getLogger(__name__)


class ImageStepObserver(Protocol):
    """Where the counts go (``server/metrics.py``: Prometheus histograms)."""

    def span_step(self, tokens: int) -> None:
        """One engine step gave one request ``tokens`` (>= 1) tokens of one image span."""

    def image_done(self, steps: int) -> None:
        """An image span reached its EOI after ``steps`` span steps."""


class StepOutput(Protocol):
    """What is read of vLLM's ``EngineCoreOutput``."""

    request_id: str
    new_token_ids: Sequence[int]


class ImageStepCounter:
    """Per request inside an image span, its span steps so far; requests outside one hold no entry."""

    def __init__(self, boi: int, eoi: int, observer: ImageStepObserver) -> None:
        self._boi, self._eoi, self._observer = boi, eoi, observer
        self._steps: dict[str, int] = {}  # request id -> span steps of its open span

    def touching(self, outputs: Iterable[StepOutput], live: Container[str]) -> list[StepOutput]:
        """The outputs of a step that may touch a span (an open one, or a BOI among their tokens), of requests
        in ``live``: read before vLLM processes the step, as vLLM drops outputs of requests aborted meanwhile."""
        return [o for o in outputs
                if (o.request_id in self._steps or self._boi in o.new_token_ids) and o.request_id in live]

    def count(self, outputs: Iterable[StepOutput], live: Container[str]) -> None:
        """Observe one engine step of each output's request (its tokens as vLLM kept them); forget those no
        longer ``live`` (finished, a stop string included)."""
        for o in outputs:
            self._read(o.request_id, o.new_token_ids)
            if o.request_id not in live:
                self._steps.pop(o.request_id, None)

    def forget(self, request_ids: Iterable[str]) -> None:
        for request_id in request_ids:
            self._steps.pop(request_id, None)

    def clear(self) -> None:
        self._steps.clear()

    def _read(self, request_id: str, tokens: Sequence[int]) -> None:
        steps = self._steps.get(request_id)  # None: outside a span
        run = 0  # tokens of the open span in this step
        for tid in tokens:
            if steps is None:
                if tid == self._boi:
                    steps = 0
            elif tid == self._eoi:
                self._observer.span_step(run + 1)
                self._observer.image_done(steps + 1)
                steps, run = None, 0
            else:
                run += 1
        if steps is None:
            self._steps.pop(request_id, None)
            return
        if run:
            self._observer.span_step(run)
            steps += 1
        self._steps[request_id] = steps


def count_image_steps(output_processor: Any, layout: TokenLayout, observer: ImageStepObserver) -> ImageStepCounter:
    """Count image steps of every request that ``output_processor`` (an AsyncLLM's) serves from now on; the
    counter returned holds the requests inside a span. Counting never raises into vLLM's output loop: the first
    error is logged and counting stops."""
    counter = ImageStepCounter(layout.boi, layout.eoi, observer)
    process, abort = output_processor.process_outputs, output_processor.abort_requests
    failed = False

    def guarded(work: Callable[[], Any]) -> Any:
        nonlocal failed
        if failed:
            return None
        try:
            return work()
        except Exception:
            failed = True
            counter.clear()
            logger.exception("counting image steps failed: chameleon:image_forward_passes and "
                             "chameleon:image_codes_accepted_per_step stop here")
            return None

    @functools.wraps(process)
    def process_outputs(engine_core_outputs, *args, **kwargs):
        live = output_processor.request_states
        touching = guarded(lambda: counter.touching(engine_core_outputs, live))
        result = process(engine_core_outputs, *args, **kwargs)
        if touching:
            guarded(lambda: counter.count(touching, live))
        return result

    @functools.wraps(abort)
    def abort_requests(request_ids, *args, **kwargs):
        aborted = abort(request_ids, *args, **kwargs)
        guarded(lambda: counter.forget(aborted))
        return aborted

    output_processor.process_outputs = process_outputs
    output_processor.abort_requests = abort_requests
    return counter
