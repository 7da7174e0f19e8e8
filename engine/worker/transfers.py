"""Host arrays onto the device of a step's tensors without making the host wait.

On an accelerator a copy from pageable memory blocks until the device has caught up with the host, which
costs the overlap that vLLM's asynchronous scheduling (Model Runner V2 above all) builds between one
step's host work and the previous step's kernels: per-step arrays go through pinned memory instead,
queued behind those kernels. On a CPU the array's own memory is used as it is.
"""

from __future__ import annotations

import numpy as np
import torch


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """``array`` as a tensor on ``device``; on a CPU it shares the array's memory."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cpu":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)
