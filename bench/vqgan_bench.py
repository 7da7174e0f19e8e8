"""VQGAN decode + PNG (the server's ImagePainter) in one batch vs one image at a time."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from engine.frontend.client import ImagePainter
from engine.frontend.splitter import ImageCodes
from engine.frontend.vqgan import load_meta_vqgan


def _median_s(work, repeats: int) -> float:
    work()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def batched_vs_single(model_dir: str | Path, batch: int = 8, repeats: int = 3) -> dict:
    """Images/s of ``paint`` on ``batch`` random images at once and as ``batch`` calls of one."""
    vqmodel = load_meta_vqgan(Path(model_dir) / "vqgan.ckpt")
    grid = vqmodel.config.grid
    painter = ImagePainter(vqmodel=vqmodel, device=torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    images = [ImageCodes(codes, (grid, grid)) for codes in
              torch.randint(0, vqmodel.config.n_embed, (batch, grid * grid), generator=gen).tolist()]
    batched = _median_s(lambda: painter.paint(images), repeats)
    single = _median_s(lambda: [painter.paint([img]) for img in images], repeats)
    return {"batch": batch, "resolution": vqmodel.config.resolution, "grid": grid,
            "batched_images_per_s": round(batch / batched, 2), "single_images_per_s": round(batch / single, 2),
            "batched_over_single": round(single / batched, 3), "torch_threads": torch.get_num_threads()}


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(batched_vs_single(sys.argv[1])))
