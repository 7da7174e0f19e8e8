"""Engine steps per image: span steps and tokens per step from synthetic per-step outputs, then through vLLM's own
OutputProcessor (finishes, aborts, stop strings, outputs vLLM drops)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from vllm.tokenizers import get_tokenizer
from vllm.v1.engine import EngineCoreOutput, FinishReason
from vllm.v1.engine.output_processor import OutputProcessor

from bench.detokenize_bench import engine_request
from engine.frontend.client import codes_as_special
from engine.frontend.image_steps import ImageStepCounter, count_image_steps
from engine.offline.tiny import TinySpec, make_tiny
from engine.shared.vocab import TokenLayout

BOI, EOI, TEXT = 1000, 1001, 7
CODES = list(range(2000, 2016))  # one 4x4 image


@dataclass
class Seen:
    """An ``ImageStepObserver`` that keeps what it is told."""

    steps: list[int] = field(default_factory=list)  # tokens per span step
    images: list[int] = field(default_factory=list)  # span steps per finished image

    def span_step(self, tokens: int) -> None:
        self.steps.append(tokens)

    def image_done(self, steps: int) -> None:
        self.images.append(steps)


@dataclass
class Out:
    request_id: str
    new_token_ids: list[int]


def _run(steps: list[dict[str, list[int]]], live: set[str] | None = None) -> tuple[Seen, ImageStepCounter]:
    """Feed one engine step per dict (request id -> its new tokens), as vLLM hands them over."""
    seen = Seen()
    counter = ImageStepCounter(BOI, EOI, seen)
    for step in steps:
        outputs = [Out(rid, tokens) for rid, tokens in step.items()]
        alive = live if live is not None else set(step)
        counter.count(counter.touching(outputs, alive), alive)
    return seen, counter


def test_text_costs_nothing():
    seen, counter = _run([{"r": [TEXT]}] * 5 + [{"r": [TEXT, TEXT, EOI]}])
    assert seen == Seen() and not counter._steps


def test_one_token_per_step_counts_every_token_after_boi():
    reply = [TEXT, BOI, *CODES, EOI, TEXT]
    seen, counter = _run([{"r": [t]} for t in reply])
    assert seen.images == [len(CODES) + 1]  # codes and EOI; BOI's own step is not the image's
    assert seen.steps == [1] * (len(CODES) + 1)
    assert not counter._steps


def test_several_tokens_per_step():
    steps = [{"r": [TEXT, BOI, CODES[0]]}, {"r": CODES[1:6]}, {"r": CODES[6:15]}, {"r": [CODES[15], EOI, TEXT]}]
    seen, _ = _run(steps)
    assert seen.steps == [1, 5, 9, 2] and seen.images == [4]
    assert sum(seen.steps) == len(CODES) + 1


def test_two_images_with_text_between_and_a_step_shared_by_both():
    first = [{"r": [BOI]}, {"r": CODES[:8]}, {"r": CODES[8:]}, {"r": [EOI]}, {"r": [TEXT, TEXT]}]
    second = [{"r": [BOI, *CODES[:10]]}, {"r": [*CODES[10:], EOI, TEXT, BOI]}, {"r": CODES}, {"r": [EOI]}]
    seen, _ = _run(first + second)
    assert seen.images == [3, 2, 2]  # the third image opens in the step that closes the second
    assert seen.steps == [8, 8, 1, 10, 7, 16, 1]


def test_choices_of_one_request_count_apart():
    seen, _ = _run([{"a": [BOI], "b": [TEXT]}, {"a": CODES[:4], "b": [BOI]}, {"a": [*CODES[4:], EOI], "b": CODES},
                    {"b": [EOI]}])
    assert seen.images == [2, 2] and seen.steps == [4, 13, 16, 1]


def test_outputs_of_requests_vllm_no_longer_serves_are_not_counted():
    seen, counter = _run([{"r": [BOI, *CODES[:3]]}, {"q": [BOI, *CODES[:3]]}], live={"r"})
    assert seen.steps == [3] and set(counter._steps) == {"r"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = make_tiny(tmp_path_factory.mktemp("tiny"), TinySpec(grid=4, codebook_size=64))
    layout = TokenLayout.from_checkpoint(model)
    return codes_as_special(get_tokenizer(str(model)), layout), layout


def _processor(tiny, *request_ids: str, **params) -> tuple[OutputProcessor, Seen, ImageStepCounter]:
    tokenizer, layout = tiny
    processor, seen = OutputProcessor(tokenizer, log_stats=False), Seen()
    counter = count_image_steps(processor, layout, seen)
    for rid in request_ids:
        processor.add_request(engine_request([tokenizer.bos_token_id], rid, **params), None)
    return processor, seen, counter


def _step(processor: OutputProcessor, request_id: str, tokens: list[int], finish: FinishReason | None = None):
    return processor.process_outputs([EngineCoreOutput(request_id=request_id, new_token_ids=tokens,
                                                       finish_reason=finish)])


def test_through_vllms_output_processor(tiny):
    _, layout = tiny
    codes = list(layout.code_to_id[:16])
    processor, seen, counter = _processor(tiny, "r")
    for tokens in ([layout.boi], codes[:5], codes[5:], [layout.eoi]):
        assert len(_step(processor, "r", tokens).request_outputs) == 1  # vLLM's own work goes on
    assert seen.images == [3] and seen.steps == [5, 11, 1]
    _step(processor, "r", [layout.boi, *codes[:4]], FinishReason.LENGTH)  # cut short mid-span
    assert seen.images == [3] and seen.steps[-1] == 4 and not counter._steps


def test_an_abort_mid_span_forgets_the_request(tiny):
    _, layout = tiny
    codes = list(layout.code_to_id[:16])
    processor, seen, counter = _processor(tiny, "r", "q")
    _step(processor, "r", [layout.boi, *codes[:4]])
    _step(processor, "q", [layout.boi, *codes[:2]])
    assert processor.abort_requests(["r"], internal=False) == ["r"]
    assert set(counter._steps) == {"q"}
    _step(processor, "r", [*codes[4:], layout.eoi])  # already in flight when aborted: vLLM drops it
    _step(processor, "q", [*codes[2:], layout.eoi])
    assert seen.steps == [4, 2, 15] and seen.images == [2] and not counter._steps


def test_tokens_vllm_trims_after_a_stop_string_are_not_counted(tiny):
    tokenizer, layout = tiny
    codes = list(layout.code_to_id[:16])
    stop = tokenizer.encode(" stop", add_special_tokens=False)
    processor, seen, counter = _processor(tiny, "r", stop=[" stop"])
    _step(processor, "r", [layout.boi, *codes[:8]])
    _step(processor, "r", [*codes[8:], layout.eoi, *stop, layout.boi, codes[0]])
    assert seen.steps == [8, 9] and seen.images == [2]  # the second BOI came after the stop: never written
    assert not counter._steps and "r" not in processor.request_states


def test_an_observer_that_fails_never_reaches_vllms_loop(tiny, caplog):
    _, layout = tiny

    class Broken(Seen):
        def span_step(self, tokens: int) -> None:
            raise RuntimeError("broken observer")

    processor = OutputProcessor(tiny[0], log_stats=False)
    count_image_steps(processor, layout, Broken())
    processor.add_request(engine_request([1], "r"), None)
    for tokens in ([layout.boi, layout.code_to_id[0]], [layout.code_to_id[1]]):
        assert len(_step(processor, "r", tokens).request_outputs) == 1
    assert caplog.text.count("counting image steps failed") == 1
