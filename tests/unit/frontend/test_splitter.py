"""Stream splitter: token deltas -> text and complete image spans, in order, never a partial image."""

from __future__ import annotations

from engine.frontend.splitter import ImageCodes, SpanSplitter, StopTextHold
from engine.shared.vocab import TokenLayout, code_name

N = 4  # codes per image, a 2x2 grid


def _layout() -> TokenLayout:
    vocab = {"<s>": 0, "<eoss>": 1, "<racm3:break>": 2, "<image>": 3, "<reserved08706>": 4}
    vocab.update({code_name(i): 10 + i for i in range(5)})
    return TokenLayout.from_vocabulary_map(vocab, vocab_size=50, image_seq_length=N)


LAYOUT = _layout()
BOI, EOI = LAYOUT.boi, LAYOUT.eoi


def _splitter() -> SpanSplitter:
    return SpanSplitter(LAYOUT, lambda ids: "".join(f"<{i}>" for i in ids))


def test_text_passes_through_and_spans_become_images():
    s = _splitter()
    out = []
    for ids, text in [([30], "Hi"), ([BOI], ""), ([11], "IMGIMGBZ"), ([14], "x"), ([10], "y"), ([12], "z"), ([EOI], ""),
                      ([31], " there")]:
        out += s.feed(ids, text)
    assert out == ["Hi", ImageCodes([1, 4, 0, 2], (2, 2)), " there"]
    assert not s.in_span


def test_multi_token_delta_mixing_text_and_span():
    s = _splitter()
    assert s.feed([30, BOI, 10, 11, 12, 13, EOI, 31], "ignored") == ["<30>", ImageCodes([0, 1, 2, 3], (2, 2)), "<31>"]


def test_cut_inside_span_gives_no_image():
    s = _splitter()
    assert s.feed([BOI, 10], "") == []
    assert s.in_span and s.finish() == []


def test_eoi_as_stop_token_not_in_ids_still_completes():
    s = _splitter()
    s.feed([BOI, 10, 11, 12, 13], "")
    assert s.finish() == [ImageCodes([0, 1, 2, 3], (2, 2))]


def test_wrong_length_span_is_dropped():
    s = _splitter()
    assert s.feed([BOI, 10, EOI], "") == []


def test_stop_hold_keeps_back_a_possible_stop_and_drops_the_matched_one():
    hold = StopTextHold(["END", "x"])
    assert hold.feed(["ab"]) == []  # 2 = len("END") - 1 characters are held
    assert hold.feed(["cE"]) == ["ab"]
    assert hold.feed(["ND"], stop_reason="END", finished=True) == ["c"]


def test_stop_hold_flushes_text_before_an_image_in_order():
    hold = StopTextHold(["END"])
    image = ImageCodes([0, 1, 2, 3], (2, 2))
    assert hold.feed(["hi", image, "z"]) == ["hi", image]
    assert hold.feed([], stop_reason=LAYOUT.eoi, finished=True) == ["z"]  # a stop token: nothing to drop


def test_stop_hold_sends_the_text_before_an_image_once_the_image_begins():
    hold = StopTextHold(["END"])
    assert hold.feed(["ab"]) == []
    assert hold.feed(["c"], image_open=True) == ["abc"]  # previews of the image come after it


def test_stop_hold_drops_nothing_when_the_text_does_not_end_with_the_reason():
    hold = StopTextHold(["END"])
    assert hold.feed(["abcdef"], stop_reason=None, finished=True) == ["abcdef"]
