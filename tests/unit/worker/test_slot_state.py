"""The per-slot record: generic set, move and remove over every declared field, device copies kept equal."""

from __future__ import annotations

import numpy as np
import torch

from engine.worker.slot_state import Field, SlotTable

FIELDS = {"mode": Field(np.int8, 0), "top_p": Field(np.float32, 1.0), "kept": Field(np.int64, -1, 2, on_device=True)}


def table() -> SlotTable:
    t = SlotTable(FIELDS, 4, torch.device("cpu"))
    t.set(0, mode=2, top_p=0.5, kept=[7, 8])
    t.set(1, mode=1, kept=[9, -1])
    return t


def same_on_device(t: SlotTable) -> bool:
    return torch.equal(t.device("kept"), torch.from_numpy(t.kept))


def test_move_swap_and_remove_carry_every_field():
    t = table()
    t.move(0, 1, swap=True)
    assert (t.mode[1], t.top_p[1], t.kept[1].tolist(), t.mode[0], t.kept[0].tolist()) == (2, 0.5, [7, 8], 1, [9, -1])
    t.move(1, 3, swap=False)  # 1 is freed: every field at its default
    assert (t.mode[3], t.kept[3].tolist()) == (2, [7, 8])
    assert (t.mode[1], t.top_p[1], t.kept[1].tolist()) == (0, 1.0, [-1, -1])
    t.remove(3)
    assert (t.mode[3], t.top_p[3], t.kept[3].tolist()) == (0, 1.0, [-1, -1])
    assert same_on_device(t)


def test_a_wider_row_widens_the_field_on_host_and_device():
    t = table()
    t.widen("kept", 3)
    t.set(2, kept=[1, 2, 3])
    assert t.kept.tolist() == [[7, 8, -1], [9, -1, -1], [1, 2, 3], [-1, -1, -1]]
    assert same_on_device(t)
    t.widen("kept", 2)  # never narrower
    assert t.kept.shape == (4, 3)
