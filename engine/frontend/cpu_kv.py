"""The KV cache size of the CPU build when the user names none: sized from the memory that is free.

vLLM's CPU worker (0.32, ``vllm/v1/worker/cpu_worker.py``) without a KV size reserves
``--gpu-memory-utilization`` (0.92) of its NUMA node's *total* memory and refuses to start unless that much is
*free* at start: "Available memory on node 0 (7.19/8.21 GiB) on startup is less than desired CPU memory
utilization (0.92, 7.56 GiB)" on any machine whose node is partly in use. With an explicit size
(``--kv-cache-memory-bytes``, or the legacy ``VLLM_CPU_KVCACHE_SPACE`` in GiB) it only checks that the KV
cache itself fits in what is free once the model is loaded. So the server gives it one: a share of what is
free after the weights and a reserve for everything else.
"""

from __future__ import annotations

from pathlib import Path

GIB = 1 << 30
MIB = 1 << 20
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
# Besides the weights and the KV cache: vLLM's EngineCore process (torch and vLLM themselves, ~1 GiB), the
# model's activations, the VQGAN's decode of up to four 512x512 images at a time in the front end.
RESERVE_BYTES = 2 * GIB
SHARE = 0.5  # of what is left after weights and reserve: the rest stays free for the machine's other users
FLOOR_BYTES = 256 * MIB  # per worker: below this a server is of little use; less is refused


class CpuMemoryError(ValueError):
    """Not even the smallest KV cache fits beside the weights in the free memory."""


def weight_bytes(model_dir: str | Path, *extra: str | Path | None) -> int:
    """Bytes of the checkpoint's weight files (top level of ``model_dir``) and of ``extra`` files (a VQGAN
    decoder kept elsewhere): an upper bound on what the engine and the image tokenizer hold (a float32
    checkpoint served in bfloat16 takes half)."""
    root = Path(model_dir)
    files = {p.resolve() for p in root.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)} \
        if root.is_dir() else set()
    files |= {Path(p).resolve() for p in extra if p is not None and Path(p).is_file()}
    return sum(p.stat().st_size for p in files)


def cpu_kv_cache_bytes(free_bytes: int, total_bytes: int, weights: int, workers: int = 1) -> int:
    """KV cache bytes per worker (vLLM's ``kv_cache_memory_bytes``, which is per worker) for ``workers``
    workers sharing a memory node with ``free_bytes`` of ``total_bytes`` free, for a checkpoint whose
    weights take ``weights`` bytes in all: ``SHARE`` of what is left after the weights and
    ``RESERVE_BYTES``, at least ``FLOOR_BYTES``, rounded down to MiB.

    Raises CpuMemoryError when even ``FLOOR_BYTES`` per worker does not fit in what is left.
    """
    if workers < 1:
        raise ValueError("workers must be >= 1")
    left = free_bytes - weights - RESERVE_BYTES
    per_worker = max(FLOOR_BYTES, int(left * SHARE) // workers) // MIB * MIB
    if per_worker * workers > left:
        raise CpuMemoryError(
            f"not enough free memory for a KV cache: {_gib(free_bytes)} of {_gib(total_bytes)} GiB free on the "
            f"memory node, the weights take {_gib(weights)} GiB and the processes about {_gib(RESERVE_BYTES)} "
            f"GiB, leaving {_gib(max(left, 0))} GiB, less than the smallest KV cache "
            f"({workers} x {_gib(FLOOR_BYTES)} GiB). Free memory, or give a size yourself: "
            "--kv-cache-memory-bytes (per worker, e.g. 512M) or VLLM_CPU_KVCACHE_SPACE (GiB)")
    return per_worker


def _gib(n: int) -> str:
    return f"{n / GIB:.2f}"
