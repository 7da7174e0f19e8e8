"""Preview schedule: at most K per image, due by whole rows, one decode in flight, all before the image ends."""

from __future__ import annotations

import asyncio

from server.previews import ImagePreviews

GRID = (8, 4)  # 8 rows of 4 codes


class Painter:
    """Records what it is asked to draw; ``gate`` holds decodes back to play a slow decoder."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, codes: list[int]) -> bytes:
        self.calls.append(codes)
        await self.gate.wait()
        return bytes([len(codes)])


async def _feed(previews: ImagePreviews, span: list[int], codes: int) -> list:
    sent = []
    for c in range(codes):
        span.append(c)
        sent += await previews.follow(span)
        await asyncio.sleep(0)  # let a decode run, as the engine's next step would
    return sent


def test_k_previews_at_row_boundaries_then_reset_for_the_next_image():
    async def run():
        painter = Painter()
        previews = ImagePreviews(painter, GRID, 3)
        span: list[int] = []
        sent = await _feed(previews, span, 32)
        sent += await previews.follow(None)  # the span closed: its image follows
        assert [p.index for p in sent] == [0, 1, 2]
        assert [len(c) for c in painter.calls] == [8, 16, 24]  # rows 2, 4, 6 of 8: whole rows only
        assert [p.data for p in sent] == [b"\x08", b"\x10", b"\x18"]
        second: list[int] = []
        again = await _feed(previews, second, 32)
        assert [p.index for p in again + await previews.follow(None)] == [0, 1, 2]

    asyncio.run(run())


def test_slow_decoder_merges_previews_and_the_last_is_awaited_before_the_image():
    async def run():
        painter = Painter()
        painter.gate.clear()
        previews = ImagePreviews(painter, GRID, 3)
        span: list[int] = []
        assert await _feed(previews, span, 30) == []  # the first decode never finished: nothing queued behind it
        assert [len(c) for c in painter.calls] == [8]
        painter.gate.set()
        sent = await previews.follow(None)
        assert [(p.index, p.data) for p in sent] == [(0, b"\x08")]

    asyncio.run(run())


def test_zero_rows_and_full_image_never_preview():
    async def run():
        painter = Painter()
        previews = ImagePreviews(painter, (2, 4), 3)
        span: list[int] = []
        sent = await _feed(previews, span, 8)
        sent += await previews.follow(None)
        assert [len(c) for c in painter.calls] == [4]  # one row of two; never zero rows, never all of them
        assert len(sent) == 1

    asyncio.run(run())


def test_close_cancels_a_decode_in_flight():
    async def run():
        painter = Painter()
        painter.gate.clear()
        previews = ImagePreviews(painter, GRID, 1)
        await _feed(previews, [], 20)
        task = previews._task
        previews.close()
        await asyncio.sleep(0)
        assert task is not None and task.cancelled()

    asyncio.run(run())


def test_painter_draws_known_rows_and_greys_the_rest(tmp_path):
    """Real tiny VQGAN decoder: a preview is a full-size PNG, mid-grey below its rows; whole images are as before."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    from engine.frontend.client import ImagePainter
    from engine.frontend.images import to_png
    from engine.frontend.splitter import ImageCodes
    from engine.frontend.vqgan import load_meta_vqgan
    from engine.offline.tiny import TinySpec, make_tiny

    model_dir = make_tiny(tmp_path / "tiny", TinySpec(grid=8, codebook_size=64))
    vqmodel = load_meta_vqgan(model_dir / "vqgan.ckpt")
    painter = ImagePainter(vqmodel, torch.device("cpu"))
    whole = torch.randint(0, 64, (64,), generator=torch.Generator().manual_seed(1))
    assert painter.paint([ImageCodes(whole.tolist(), (8, 8))]) == [to_png(vqmodel.decode(whole.view(1, 8, 8))[0])]
    [preview] = painter.paint([ImageCodes(whole.tolist()[:24], (8, 8))])  # three rows of eight known
    pixels = np.asarray(Image.open(io.BytesIO(preview)).convert("RGB"))
    assert pixels.shape == (16, 16, 3)  # two pixels per code
    assert (pixels[6:] == 128).all() and not (pixels[:6] == 128).all()


def test_painter_decodes_in_slices_of_bounded_pixels(tmp_path):
    """A batch larger than ``max_decode_pixels`` is decoded slice by slice, into the same pictures."""
    import torch

    from engine.frontend.client import ImagePainter
    from engine.frontend.splitter import ImageCodes
    from engine.frontend.vqgan import load_meta_vqgan
    from engine.offline.tiny import TinySpec, make_tiny

    model_dir = make_tiny(tmp_path / "tiny", TinySpec(grid=8, codebook_size=64))
    vqmodel = load_meta_vqgan(model_dir / "vqgan.ckpt")
    codes = torch.randint(0, 64, (5, 64), generator=torch.Generator().manual_seed(2)).tolist()
    images = [ImageCodes(image, (8, 8)) for image in codes]
    whole = ImagePainter(vqmodel, torch.device("cpu"))
    one_at_a_time = ImagePainter(vqmodel, torch.device("cpu"), max_decode_pixels=16 * 16)
    decodes = []
    vqmodel.decoder.register_forward_hook(lambda _module, args, _out: decodes.append(args[0].shape[0]))
    sliced = one_at_a_time.paint(images)
    assert decodes == [1] * 5
    assert sliced == [whole.paint([image])[0] for image in images]


def test_image_tokenizer_encodes_in_passes_of_bounded_pixels(tmp_path):
    """Images beyond ``max_encode_pixels`` are encoded pass by pass, into the same spans as one at a time."""
    import dataclasses

    import torch
    from PIL import Image

    from engine.frontend.client import ImageTokenizer
    from engine.offline.tiny import TinySpec, make_tiny

    model_dir = make_tiny(tmp_path / "tiny", TinySpec(grid=8, codebook_size=64))
    tokenizer = ImageTokenizer.from_checkpoint(model_dir, torch.device("cpu"))
    side = tokenizer.vqmodel.config.resolution
    one_per_pass = dataclasses.replace(tokenizer, max_encode_pixels=side * side)
    gen = torch.Generator().manual_seed(3)
    images = [Image.fromarray(torch.randint(0, 256, (side, side, 3), generator=gen, dtype=torch.uint8).numpy())
              for _ in range(3)]
    passes = []
    tokenizer.vqmodel.encoder.register_forward_hook(lambda _module, args, _out: passes.append(args[0].shape[0]))
    spans = one_per_pass.encode_spans(images)
    assert passes == [1, 1, 1]
    assert spans == [tokenizer.encode_spans([image])[0] for image in images]

