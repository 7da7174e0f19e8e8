"""Guidance memory accounting: what a guided request's unconditional twin takes per token, against the private
caches the model allocates on every tensor-parallel rank."""

from __future__ import annotations

import pytest
import torch
from transformers import ChameleonConfig

from engine.shared.kv_size import kv_bytes_per_token, kv_heads_per_rank
from engine.worker.private_kv import PrivateKV

CONFIG = ChameleonConfig(hidden_size=128, num_attention_heads=8, num_key_value_heads=2, num_hidden_layers=3)


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_accounting_equals_the_private_caches_of_all_ranks(tp, dtype):
    head_dim = CONFIG.hidden_size // CONFIG.num_attention_heads
    one_rank = PrivateKV(CONFIG.num_hidden_layers, 1, kv_heads_per_rank(CONFIG.num_key_value_heads, tp), head_dim,
                         dtype, torch.device("cpu"))
    assert kv_bytes_per_token(CONFIG, tp, dtype) == one_rank.nbytes * tp


def test_ranks_beyond_the_kv_heads_each_hold_a_copy():
    per_tp = {tp: kv_bytes_per_token(CONFIG, tp, torch.float32) for tp in (1, 2, 4, 8)}
    assert per_tp[1] == per_tp[2] == 2 * 3 * 2 * 16 * 4  # keys and values, 3 layers, 2 heads of 16, fp32
    assert per_tp[4] == 2 * per_tp[2] and per_tp[8] == 4 * per_tp[2]
