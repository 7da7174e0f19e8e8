"""Per-slot state of a runner's batch as a record of arrays, one row a slot, after vLLM's ``InputBatch``: fields
are declared once, and add, move and remove are generic over them, so that a new field cannot be missed in a
move. Host arrays (numpy), which the host reads and copies to the device per step; fields that a step gathers
from by device indices keep a device copy too, written whenever their rows change."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.worker.transfers import to_device


@dataclass(frozen=True, slots=True)
class Field:
    """One per-slot field: its dtype, its value in a free slot, values per slot (0: a scalar), whether a device
    copy is kept."""

    dtype: type
    default: int | float | bool
    width: int = 0
    on_device: bool = False


class SlotTable:
    """The fields of :class:`Field` declarations as attributes: ``table.name[slot]`` (numpy); device copies by
    :meth:`device`."""

    def __init__(self, fields: dict[str, Field], max_slots: int, device: torch.device) -> None:
        self._fields = fields
        self._device = device
        self._copies: dict[str, torch.Tensor] = {}
        for name, f in fields.items():
            array = np.full((max_slots, f.width) if f.width else max_slots, f.default, dtype=f.dtype)
            setattr(self, name, array)
            if f.on_device:
                self._copies[name] = to_device(array, device).clone()

    def set(self, slot: int, **values: Any) -> None:
        """``slot``'s fields from ``values``; the others keep theirs."""
        for name, value in values.items():
            getattr(self, name)[slot] = value
        self._copy([slot], [name for name in values if name in self._copies])

    def remove(self, slot: int) -> None:
        """Every field of ``slot`` back to its default: a free slot."""
        self.set(slot, **{name: f.default for name, f in self._fields.items()})

    def move(self, src: int, dst: int, swap: bool) -> None:
        """``dst`` takes ``src``'s fields; with ``swap`` the two exchange, else ``src`` is freed."""
        for name in self._fields:
            a = getattr(self, name)
            a[[dst, src]] = a[[src, dst]] if swap else a[[src, src]]
        self._copy([src, dst], list(self._copies))
        if not swap:
            self.remove(src)

    def widen(self, name: str, width: int) -> None:
        """Field ``name`` at least ``width`` values per slot, new columns at its default: a reallocation when a
        request is added, never in a step."""
        narrow = getattr(self, name)
        if width <= narrow.shape[1]:
            return
        f = self._fields[name]
        wide = np.full((len(narrow), width), f.default, dtype=f.dtype)
        wide[:, :narrow.shape[1]] = narrow
        setattr(self, name, wide)
        if name in self._copies:
            self._copies[name] = to_device(wide, self._device).clone()

    def device(self, name: str) -> torch.Tensor:
        """The device copy of field ``name`` (every slot)."""
        return self._copies[name]

    def _copy(self, slots: list[int], names: list[str]) -> None:
        """The device copies of fields ``names`` at ``slots`` from the host's."""
        for name in names:
            self._copies[name][to_device(np.array(slots), self._device)] = to_device(getattr(self, name)[slots],
                                                                                     self._device)
