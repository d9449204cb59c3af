"""Where a model runs: the torch device for a name (``"cpu"``, ``"cuda"``, ``"cuda:N"``,
``"auto"``)."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device) -> torch.device:
    """Returns the torch device for ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.

    Raises:
        RuntimeError: if CUDA is asked for but not available.
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {name!r} asked for but CUDA is not available; use 'cpu' or 'auto'"
        )
    return device
