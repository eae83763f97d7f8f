"""Where tensors live: one place decides the device, the generators and the memory chunks.

Every code path asks this module instead of deciding on its own (house style point 13):

* :func:`resolve_device` turns a user's ``"auto" | "cpu" | "cuda" | "cuda:N" | "mps"`` (or a
  ``torch.device``) into a ``torch.device``; ``auto`` picks CUDA, then MPS, else the CPU (and
  logs a note). A device that is not there is a one-line :class:`ConfigError`.
* :func:`generator_for` gives a seeded ``torch.Generator`` on a device, so a run repeats on the
  same device (a CUDA generator draws different numbers than a CPU one: results are
  reproducible per device, not across devices).
* :func:`attack_precision` is the TF32 policy: attack losses differentiate twice (gradient
  matching), and TF32's 10-bit mantissa in matmuls/convolutions distorts the matched gradients,
  so TF32 is switched off while an attack runs, and restored afterwards.
* :func:`chunk_size` splits batched restarts/clients into chunks that fit a memory budget.

Nothing in fedleak calls ``Tensor.cuda``: tensors are created with ``device=`` of the model/inputs.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from fedleak.errors import ConfigError

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "attack_precision",
    "chunk_size",
    "device_of",
    "fast_layout",
    "generator_for",
    "memory_budget",
    "resolve_device",
    "restart_bytes",
]

log = logging.getLogger(__name__)

DeviceLike = str | torch.device | None

#: default share of the free accelerator memory (or a fixed 4 GiB on the CPU) a batched run uses
DEFAULT_MEMORY_BUDGET = 0.8
_CPU_BUDGET_BYTES = 4 * 2**30


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: DeviceLike = "auto") -> torch.device:
    """The ``torch.device`` for a user's choice, checked to exist.

    Args:
        device: "auto" (CUDA, then MPS, else CPU), "cpu", "cuda", "cuda:N", "mps", a
            ``torch.device`` or None (same as "auto").

    Raises:
        ConfigError: an unknown name, or a device this machine does not have.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        log.info("device 'auto': no CUDA or MPS device found, running on the CPU")
        return torch.device("cpu")
    try:
        dev = device if isinstance(device, torch.device) else torch.device(str(device).strip())
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"`device` must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'; got {device!r}."
        ) from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = dev.index if dev.index is not None else (torch.cuda.current_device() if n else 0)
        if index >= n:
            have = f"{n} CUDA device(s) (cuda:0..cuda:{n - 1})" if n else "no CUDA device"
            raise ConfigError(
                f"`device` {str(dev)!r} is not available: this machine has {have}; "
                "use --device cpu or auto."
            )
        return torch.device("cuda", index)
    if dev.type == "mps":
        if not _mps_available():
            raise ConfigError(
                "`device` 'mps' is not available on this machine; use --device cpu or auto."
            )
        return torch.device("mps")
    raise ConfigError(
        f"`device` must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'; got {device!r}."
    )


def device_of(module_or_tensor: nn.Module | torch.Tensor | None) -> torch.device:
    """The device of a model (its first parameter or buffer) or a tensor; CPU for neither."""
    if isinstance(module_or_tensor, torch.Tensor):
        return module_or_tensor.device
    if isinstance(module_or_tensor, nn.Module):
        for t in module_or_tensor.parameters():
            return t.device
        for t in module_or_tensor.buffers():
            return t.device
    return torch.device("cpu")


def fast_layout(model: nn.Module) -> nn.Module:
    """Put a CPU model's conv weights in channels-last layout, in place; return it.

    Why: oneDNN's channels-last convolutions are faster on the CPU than NCHW ones (the seed-001
    conv net trains 1.2-1.3x faster at one thread, DP-SGD 1.1x: ``benchmarks/cpu_layout.py``).
    Values and shapes do not change, only strides (so sums may round differently in the last
    bit). Models without 2-D convolutions and models on other devices are left as they are.
    """
    if device_of(model).type == "cpu" and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)
    return model


def generator_for(device: DeviceLike, seed: int) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (MPS draws on the CPU).

    Draws from it with ``device=`` of the same device: ``torch.rand(shape, generator=g,
    device=g.device)``.
    """
    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    if dev.type == "mps":  # MPS generators are not supported everywhere: draw on the CPU
        dev = torch.device("cpu")
    return torch.Generator(device=dev).manual_seed(int(seed))


@contextlib.contextmanager
def attack_precision() -> Iterator[None]:
    """Full float32 precision for the duration of an attack (TF32 off), restored afterwards.

    Why: gradient-matching attacks differentiate twice; TF32 (on by default for cuDNN
    convolutions on Ampere+ GPUs) rounds inputs to a 10-bit mantissa, which perturbs the
    simulated update by ~1e-3 relative and makes the cosine/L2 objective noisy near its
    optimum. A no-op on the CPU.
    """
    matmul = torch.backends.cuda.matmul.allow_tf32
    cudnn = torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


def memory_budget(device: torch.device, budget: float | int | None = None) -> int:
    """Bytes a batched computation on ``device`` may use.

    ``budget`` is a fraction of the free memory in (0, 1], a byte count > 1, or None for the
    default (``FEDLEAK_MEMORY_BUDGET`` env var, else 80 % of the free CUDA memory, or of the
    available RAM on the CPU/MPS).
    """
    if budget is None:
        env = os.environ.get("FEDLEAK_MEMORY_BUDGET")
        budget = float(env) if env else DEFAULT_MEMORY_BUDGET
    if isinstance(budget, bool) or not isinstance(budget, int | float) or budget <= 0:
        raise ConfigError(
            f"`memory_budget` must be a fraction in (0, 1] or a byte count > 1; got {budget!r}."
        )
    if budget > 1:
        return int(budget)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * budget)
    try:  # the CPU (and MPS, which shares it): the memory available now
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        free = _CPU_BUDGET_BYTES
    return int(max(free, _CPU_BUDGET_BYTES // 4) * budget)


def chunk_size(total: int, bytes_per_item: int, budget_bytes: int, what: str) -> int:
    """How many of ``total`` items (restarts, clients) to run at once within ``budget_bytes``.

    Raises:
        ConfigError: when even one item needs more than the budget (says how much).
    """
    if bytes_per_item <= 0:
        return total
    n = budget_bytes // bytes_per_item
    if n < 1:
        raise ConfigError(
            f"one {what} needs about {bytes_per_item / 2**20:.0f} MiB, more than the memory "
            f"budget of {budget_bytes / 2**20:.0f} MiB; use a smaller batch/image size, a "
            "larger `memory_budget`, or a device with more memory."
        )
    return int(min(total, n))


@torch.no_grad()
def restart_bytes(
    model: nn.Module,
    image_shape: tuple[int, ...],
    num_images: int,
    forward: Callable[[nn.Module, torch.Tensor], Any] | None = None,
) -> int:
    """Rough memory of one restart of a gradient-matching attack on ``num_images`` images.

    One probe forward (no graph) sums the sizes of every module's output; a restart keeps the
    forward activations, the backward's intermediates and their second-order gradients (about
    6x the activations) plus the simulated update and its gradient (about 4x the parameters).
    ``forward(model, x)`` calls a model that takes more than the images (a diffusion UNet:
    images and timesteps); default ``model(x)``. An estimate to size chunks, not a bound: keep
    the budget below the device's memory; 0 when the model cannot be probed (no chunking).
    """
    total = 0

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was = model.training
    model.eval()
    try:
        x = torch.zeros(num_images, *image_shape, device=device_of(model))
        if forward is None:
            model(x)
        else:
            forward(model, x)
    except Exception:  # noqa: BLE001 - a model that cannot be probed: no estimate
        return 0
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return 6 * total + 4 * params
