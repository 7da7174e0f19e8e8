"""The CPU build's KV cache size from free memory (engine/frontend/cpu_kv.py), where the user names none."""

from __future__ import annotations

import pytest

from engine.frontend.cpu_kv import (
    FLOOR_BYTES,
    GIB,
    MIB,
    RESERVE_BYTES,
    SHARE,
    CpuMemoryError,
    cpu_kv_cache_bytes,
    weight_bytes,
)


def test_a_share_of_what_is_free_after_weights_and_reserve():
    # The machine of issue 21: NUMA node 0 reports 8.21 GiB, 7.19 GiB free; vLLM's default wants 7.56 free.
    free, total, weights = int(7.19 * GIB), int(8.21 * GIB), 20 * MIB
    kv = cpu_kv_cache_bytes(free, total, weights)
    assert kv == int((free - weights - RESERVE_BYTES) * SHARE) // MIB * MIB
    assert kv % MIB == 0 and 2 * GIB < kv and weights + kv + RESERVE_BYTES < free


def test_workers_share_it_and_a_bigger_checkpoint_gets_less():
    free = 30 * GIB
    one = cpu_kv_cache_bytes(free, 32 * GIB, 14 * GIB)
    assert one == int((16 * GIB - RESERVE_BYTES) * SHARE) // MIB * MIB
    assert cpu_kv_cache_bytes(free, 32 * GIB, 14 * GIB, workers=2) == one // 2 // MIB * MIB
    assert cpu_kv_cache_bytes(free, 32 * GIB, 20 * GIB) < one


def _leaving(kv: int) -> int:
    """Free memory that leaves ``kv`` bytes after the reserve (no weights)."""
    return RESERVE_BYTES + kv


def test_the_floor_and_a_clear_error_below_it():
    assert cpu_kv_cache_bytes(_leaving(FLOOR_BYTES + MIB), 8 * GIB, 0) == FLOOR_BYTES  # half would be under the floor
    with pytest.raises(CpuMemoryError, match=r"--kv-cache-memory-bytes .* VLLM_CPU_KVCACHE_SPACE") as e:
        cpu_kv_cache_bytes(6 * GIB, 24 * GIB, 5 * GIB)
    assert "6.00 of 24.00 GiB free" in str(e.value) and "the weights take 5.00 GiB" in str(e.value)
    with pytest.raises(CpuMemoryError):
        cpu_kv_cache_bytes(_leaving(FLOOR_BYTES), 8 * GIB, 0, workers=2)


def test_weight_bytes_counts_weight_files_once(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "vqgan.ckpt").write_bytes(b"x" * 300)
    (tmp_path / "config.json").write_text("{}")
    elsewhere = tmp_path.parent / f"{tmp_path.name}-vqgan.ckpt"
    elsewhere.write_bytes(b"x" * 50)
    assert weight_bytes(tmp_path) == 1300
    assert weight_bytes(tmp_path, tmp_path / "vqgan.ckpt", None) == 1300  # the decoder in the folder, once
    assert weight_bytes(tmp_path, elsewhere) == 1350
    assert weight_bytes(tmp_path / "not-a-folder") == 0
