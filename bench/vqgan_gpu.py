"""VQGAN decode at Chameleon's real shape: images/s per dtype, layout and batch, FLOPs, fraction of peak.

Chameleon's VQGAN (facebookresearch/chameleon's ``vqgan.yaml``) turns 32×32 codes of an 8,192-entry,
256-dim codebook into 512×512 pixels: ch 128, ch_mult (1, 1, 2, 2, 4), 2 residual blocks per level,
no attention. Speed does not depend on weight values, so the weights are random and the script needs
no checkpoint, only torch and ``engine.frontend.vqgan``: it runs on a bare GPU machine.

The peaks it divides by are measured in the same run, on the same card: a large bf16/fp32 matrix product,
and the decoder's own heaviest convolution (128→128 channels, 3×3, at 512×512) in each dtype and layout.
"fp32" is PyTorch's default, which lets cuDNN run fp32 convolutions in TF32; "fp32-strict" turns that off.
"painter" is what the server runs: fp32 decode in slices of bounded pixels, then PNG encoding on the CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch
from torch.utils.flop_counter import FlopCounterMode

from engine.frontend.client import ImagePainter
from engine.frontend.images import to_png
from engine.frontend.splitter import ImageCodes
from engine.frontend.vqgan import VQGANConfig, VQModel

CHAMELEON = VQGANConfig(embed_dim=256, n_embed=8192, z_channels=256, resolution=512)
DTYPES = {"fp32": torch.float32, "fp32-strict": torch.float32, "bf16": torch.bfloat16}


@contextmanager
def tf32_convs(allowed: bool) -> Iterator[None]:
    """cuDNN's TF32 switch for the duration (PyTorch's default is on)."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before


def median_seconds(work: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of ``work`` after two warm-ups, synchronizing the device around each run."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        work()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        work()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def decode_flops(model: VQModel, grid: int) -> int:
    """Matmul and convolution FLOPs (2 per multiply-add) of decoding one image, counted by torch."""
    codes = torch.zeros(1, grid, grid, dtype=torch.long, device=model.quantize.embedding.weight.device)
    with FlopCounterMode(display=False) as counter:
        model.decode(codes)
    return counter.get_total_flops()


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> float:
    """FLOP/s of an n×n×n product on random data."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return 2 * n**3 / median_seconds(lambda: a @ b, device, repeats)


def conv_peak(device: torch.device, dtype: torch.dtype, channels_last: bool, batch: int, side: int,
              repeats: int) -> float:
    """FLOP/s of the decoder's heaviest convolution (128→128, 3×3, padding 1) at ``side``×``side``."""
    conv = torch.nn.Conv2d(128, 128, 3, padding=1).to(device, dtype)
    x = torch.randn(batch, 128, side, side, device=device, dtype=dtype)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        seconds = median_seconds(lambda: conv(x), device, repeats)
    return 2 * 128 * 128 * 9 * side * side * batch / seconds


def decoder(cfg: VQGANConfig, device: torch.device, dtype: torch.dtype, channels_last: bool,
            compiled: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    model = VQModel(cfg).to(device, dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compiled:
        model.decoder = torch.compile(model.decoder)
    return model.decode


def time_decodes(cfg: VQGANConfig, device: torch.device, dtype: torch.dtype, channels_last: bool,
                 compiled: bool, batches: list[int], repeats: int) -> dict[int, tuple[float, int]]:
    """Seconds per batched decode and peak device memory (bytes, weights included), for each batch size."""
    decode = decoder(cfg, device, dtype, channels_last, compiled)
    timed = {}
    for batch in batches:
        codes = torch.randint(0, cfg.n_embed, (batch, cfg.grid, cfg.grid), device=device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = median_seconds(lambda c=codes: decode(c), device, repeats)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
        timed[batch] = (seconds, peak)
    return timed


def painter_figures(cfg: VQGANConfig, device: torch.device, batch: int) -> dict:
    """The server's own path (``ImagePainter.paint``: fp32 decode in bounded slices, then PNG on the CPU)."""
    painter = ImagePainter(VQModel(cfg).to(device), device)
    images = [ImageCodes(codes, (cfg.grid, cfg.grid))
              for codes in torch.randint(0, cfg.n_embed, (batch, cfg.grid * cfg.grid)).tolist()]
    painter.paint(images[:2])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = median_seconds(lambda: painter.paint(images), device, 3)
    peak = torch.cuda.max_memory_allocated(device) >> 20 if device.type == "cuda" else 0
    return {"batch": batch, "images_per_s": round(batch / seconds, 1), "peak_mib": peak,
            "max_decode_pixels": painter.max_decode_pixels}


def png_images_per_s(pictures: list[torch.Tensor], threads: int) -> float:
    """PNG encoding rate with ``threads`` encoders at once (Pillow's zlib work runs outside the GIL)."""
    with ThreadPoolExecutor(threads) as pool:
        seconds = median_seconds(lambda: list(pool.map(to_png, pictures)), torch.device("cpu"), 3)
    return round(len(pictures) / seconds, 1)


def run(cfg: VQGANConfig, device: torch.device, dtypes: list[str], batches: list[int], repeats: int,
        compile_too: bool, peak_n: int) -> dict:
    torch.manual_seed(0)
    with tf32_convs(False):
        flops = decode_flops(VQModel(cfg).to(device), cfg.grid)
    peaks: dict[str, float] = {}
    rows = []
    conv_batch = 8 if device.type == "cuda" else 1
    for name in dtypes:
        dtype = DTYPES[name]
        torch.backends.cuda.matmul.allow_tf32 = name == "fp32"
        with tf32_convs(name != "fp32-strict"):
            peaks[f"matmul-{name}"] = matmul_peak(device, dtype, peak_n, repeats)
            variants = [(False, False), (True, False)] + ([(True, True)] if compile_too else [])
            for channels_last, compiled in variants:
                layout = "nhwc" if channels_last else "nchw"
                conv_key = f"conv-{name}-{layout}"
                if conv_key not in peaks:
                    peaks[conv_key] = conv_peak(device, dtype, channels_last, conv_batch, cfg.resolution, repeats)
                timed = time_decodes(cfg, device, dtype, channels_last, compiled, batches, repeats)
                for batch, (seconds, peak_bytes) in timed.items():
                    achieved = flops * batch / seconds
                    rows.append({"dtype": name, "layout": layout, "compiled": compiled, "batch": batch,
                                 "ms_per_batch": round(seconds * 1e3, 2), "images_per_s": round(batch / seconds, 1),
                                 "peak_mib": peak_bytes >> 20,
                                 "tflops": round(achieved / 1e12, 2),
                                 "of_conv_peak": round(achieved / peaks[conv_key], 3),
                                 "of_matmul_peak": round(achieved / peaks[f"matmul-{name}"], 3)})
    torch.backends.cuda.matmul.allow_tf32 = False
    painter = painter_figures(cfg, device, max(batches))
    side = cfg.resolution
    noise = torch.rand(3, side, side) * 2 - 1  # PNG's worst case
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 16, 16), size=(side, side), mode="bicubic")[0] * 2 - 1
    png_ms = {name: round(median_seconds(lambda p=p: to_png(p), torch.device("cpu"), repeats) * 1e3, 2)
              for name, p in (("noise", noise), ("smooth", smooth))}
    png_threads = {n: png_images_per_s([smooth] * 16, n) for n in (1, 4, 8)}
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "resolution": cfg.resolution, "grid": cfg.grid,
            "codebook": [cfg.n_embed, cfg.embed_dim], "decode_gflop_per_image": round(flops / 1e9, 2),
            "peaks_tflops": {k: round(v / 1e12, 2) for k, v in peaks.items()}, "decode": rows,
            "png_encode_ms_per_image_cpu": png_ms,
            "png_images_per_s_by_threads": png_threads, "painter": painter}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32],
                        help="16 is the server's largest decode batch (engine.frontend.batching.MicroBatcher)")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd decoders (NHWC)")
    parser.add_argument("--resolution", type=int, default=CHAMELEON.resolution,
                        help="smaller for a quick check on CPU; the real shape is 512")
    parser.add_argument("--peak-n", type=int, default=8192, help="side of the peak matrix product")
    args = parser.parse_args(argv)
    cfg = VQGANConfig(embed_dim=CHAMELEON.embed_dim, n_embed=CHAMELEON.n_embed, z_channels=CHAMELEON.z_channels,
                      resolution=args.resolution)
    report = run(cfg, torch.device(args.device), args.dtypes, args.batches, args.repeats, args.compile, args.peak_n)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
