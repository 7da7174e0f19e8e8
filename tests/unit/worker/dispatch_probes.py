"""What a step's tensor work would cost on an accelerator, counted on CPU tensors at torch's dispatcher: the
operations that make the host wait for the device (:class:`SyncProbe`) and the operations dispatched at all
(:class:`OpCount`: each a kernel launch there). Dispatcher modes see function forms (``torch.nonzero``,
one-argument ``torch.where``) as well as methods; the few host reads that never reach the dispatcher on a CPU
tensor (``.cpu()``, ``.numpy()``, ``.tolist()``, ``.to(device)``) are seen by a function mode beside it."""

from __future__ import annotations

import contextlib
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

ENGINE = Path(__file__).resolve().parents[3] / "engine"
aten = torch.ops.aten

# Always a wait on CUDA: a value read back, or an output whose size only the device knows.
_WAITS = {
    aten._local_scalar_dense.default: "a value read back (item, int/float, a truth value)",
    aten.nonzero.default: "nonzero (torch.nonzero, one-argument torch.where)",
    aten.masked_select.default: "masked_select",
}
# Writes whose value, a host scalar made a tensor (``t[index] = 0.0``), is copied in from pageable memory first.
_WRITES = {aten.index_put_.default: 2, aten.index_put.default: 2, aten._index_put_impl_.default: 2,
           aten.masked_fill_.Tensor: 2, aten.masked_fill.Tensor: 2}
_INDEXED = (aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default)
_HOST_READS = {torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.tolist}


def engine_site() -> str:
    """The innermost frame of ``engine/`` on the stack, as ``file:line (function)``."""
    frames = [f for f in traceback.extract_stack() if Path(f.filename).resolve().is_relative_to(ENGINE)]
    if not frames:
        return "outside engine/"
    f = frames[-1]
    return f"{Path(f.filename).resolve().relative_to(ENGINE.parent)}:{f.lineno} ({f.name})"


class _StepProbe(TorchDispatchMode):
    """A dispatcher mode that sees the operations of the calls made :meth:`during` it, except those made
    :meth:`paused` (a stand-in for work that is not the processor's, as the model's forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.on = False

    def during(self, fn: Callable) -> Callable:
        def probed(*args: Any, **kwargs: Any) -> Any:
            self.on = True
            try:
                with self.modes():
                    return fn(*args, **kwargs)
            finally:
                self.on = False
        return probed

    def paused(self, fn: Callable) -> Callable:
        def unprobed(*args: Any, **kwargs: Any) -> Any:
            on, self.on = self.on, False
            try:
                return fn(*args, **kwargs)
            finally:
                self.on = on
        return unprobed

    def modes(self) -> contextlib.AbstractContextManager:
        return self

    def seen(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        raise NotImplementedError

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.on:
            self.seen(func, args, kwargs, out)
        return out


class _HostCopies(TorchFunctionMode):
    """Host reads and blocking copies of a CPU tensor, which dispatch nothing (``.to`` to the device it is on
    returns the tensor); a dtype cast is not one."""

    def __init__(self, probe: SyncProbe) -> None:
        super().__init__()
        self.probe = probe

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if self.probe.on:
            if func in _HOST_READS:
                self.probe.note(f"a host read ({func.__name__})")
            elif func is torch.Tensor.to and not kwargs.get("non_blocking", False) and (
                    "device" in kwargs or any(isinstance(a, (torch.device, str)) for a in args[1:])):
                self.probe.note("a blocking copy (Tensor.to a device without non_blocking)")
        return func(*args, **kwargs)


class SyncProbe(_StepProbe):
    """Every operation that would make the host wait for a CUDA device, by kind and engine site (``waits``):
    values read back, ``nonzero``, boolean-mask indexing, ``repeat_interleave`` of tensor repeats without
    ``output_size``, host reads and blocking copies, and ``index_put_``/``masked_fill_`` of a host value (a
    Python scalar assigned by index: ``torch`` makes it a tensor with ``lift_fresh``, which the device must copy
    in). A Python scalar given as an argument (``index_fill_``, ``masked_fill_`` of a float) or assigned to a
    slice (a ``fill_``) does not wait."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: Counter[str] = Counter()
        self._lifted: list[torch.Tensor] = []  # host values made tensors (kept alive: their ids stay theirs)

    def note(self, kind: str) -> None:
        self.waits[f"{kind} at {engine_site()}"] += 1

    def modes(self) -> contextlib.AbstractContextManager:
        self._lifted = []
        stack = contextlib.ExitStack()
        stack.enter_context(_HostCopies(self))
        stack.enter_context(self)
        return stack

    def seen(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        if func in _WAITS:
            self.note(_WAITS[func])
        elif func is aten.lift_fresh.default:
            self._lifted.append(out)
        elif func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            self.note("repeat_interleave of tensor repeats without output_size")
        if func in _INDEXED and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] or ()):
            self.note("a boolean-mask index")
        if func in _WRITES and any(args[_WRITES[func]] is t for t in self._lifted):
            self.note(f"{func.__name__.split('.')[0]} of a host value")


class OpCount(_StepProbe):
    """The operations dispatched, by name (``ops``): on an accelerator each is a kernel launch (views and
    scalar wrapping aside, counted alike), so their number must not grow with the batch's rows."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def seen(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        self.ops[func.overloadpacket.__name__] += 1
