"""Devices and numerics: where a net's tensors live and how exact the GPU arithmetic is.

- :func:`resolve_device`: ``None`` means ``--device`` when a verb was given one, else the
  ``RLL_REPRO_DEFAULT_DEVICE`` environment variable, else ``cuda`` when a GPU is available, else ``cpu`` (the default
  of ``Net``, ``get_solver`` and every ``--device`` flag); ``"cuda"``/``"cuda:N"``/``"cpu"``/``"meta"``
  as torch spells them. A solver's ``solver_mode: GPU`` + ``device_id`` become ``cuda:<device_id>``
  when no device is given (:func:`solver_device`), as Caffe's ``caffe train`` reads them.
- :func:`set_numerics`: the exact mode (default) is what the authors asked for when they ran Caffe
  without cuDNN: no TF32 in cuDNN convolutions or cuBLAS matmuls (torch turns cuDNN TF32 on by
  default), deterministic algorithms, ``cudnn.benchmark`` off. ``fast=True`` is the opt-in speed mode:
  TF32 on, ``cudnn.benchmark`` on, non-deterministic algorithms allowed (the net also switches to
  channels_last, see ``Net.set_memory_format``). float64 accumulations of the loss layers are kept in
  both modes.
- :func:`host_reads_allowed`: layers validate data (label ranges, ...) only where reading a value
  back costs nothing (CPU tensors). On a GPU such a check would synchronise the host with the device
  in every step; Caffe's GPU code does not check there either (its checks are DCHECKs).
"""
from __future__ import annotations

import os

import torch

from rll_repro.errors import RLLReproError

DEVICE_HELP = "cpu, cuda or cuda:N (default: cuda when a GPU is available, else cpu)"
DEFAULT_DEVICE_ENV = "RLL_REPRO_DEFAULT_DEVICE"  # what device=None means when set (e.g. a test run on cuda)


class DeviceError(RLLReproError):
    """A device that does not exist on this machine, or a device string torch does not know."""


def _fake_mode_active() -> bool:
    """True inside ``torch._subclasses.fake_tensor.FakeTensorMode`` (fake cuda tensors without a GPU)."""
    try:
        from torch._guards import detect_fake_mode

        return detect_fake_mode() is not None
    except Exception:  # noqa: BLE001 - private API: no fake mode when it is missing
        return False


_process_default: torch.device | None = None
_fast = False
_numerics_chosen = False


def set_default_device(device) -> torch.device | None:
    """Make ``device`` what ``device=None`` means in this process (the CLI's ``--device``: every net,
    solver and evaluation the verb builds then uses it); None restores the automatic choice."""
    global _process_default
    _process_default = resolve_device(device) if device is not None else None
    return _process_default


def resolve_device(device=None) -> torch.device:
    """The torch.device for ``device`` (None: the process default set by ``--device``, else cuda
    when available, else cpu); a cuda device that this machine lacks is a one-line DeviceError
    (unless fake tensors stand in for it)."""
    if device is None:
        if _process_default is not None:
            return _process_default
        if os.environ.get(DEFAULT_DEVICE_ENV):
            return resolve_device(os.environ[DEFAULT_DEVICE_ENV])
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"unknown device {device!r} (expected {DEVICE_HELP})") from None
    if dev.type == "cuda" and not _fake_mode_active():
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r}: no CUDA GPU is available on this machine (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def solver_device(solver_param, device=None) -> torch.device:
    """Caffe's ``solver_mode``/``device_id`` when no device is given: GPU -> cuda:<device_id> if a GPU
    is there (else the default), CPU -> cpu."""
    if device is not None or _process_default is not None:
        return resolve_device(device)
    if solver_param is not None and solver_param.HasField("solver_mode"):
        if int(solver_param.solver_mode) == 0:  # CPU
            return torch.device("cpu")
        if torch.cuda.is_available():
            return resolve_device(f"cuda:{int(solver_param.device_id)}")
    return resolve_device(None)


def set_numerics(fast: bool = False) -> dict:
    """Exact (default) or fast GPU arithmetic for this process; returns the settings applied.

    Exact: TF32 off in cuDNN and cuBLAS, deterministic algorithms (warn-only, so that an op without a
    deterministic kernel still runs and says so), cudnn.benchmark off, and the cuBLAS workspace config
    that deterministic cuBLAS needs. Fast: TF32 on, cudnn.benchmark on, nondeterminism allowed."""
    global _fast, _numerics_chosen
    _fast, _numerics_chosen = bool(fast), True
    if not fast:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.allow_tf32 = bool(fast)
    torch.backends.cuda.matmul.allow_tf32 = bool(fast)
    torch.backends.cudnn.benchmark = bool(fast)
    torch.backends.cudnn.deterministic = not fast
    torch.use_deterministic_algorithms(not fast, warn_only=True)
    return {
        "mode": "fast" if fast else "exact",
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn.benchmark": torch.backends.cudnn.benchmark,
        "deterministic": not fast,
    }


def ensure_numerics() -> None:
    """The exact mode, unless this process chose a mode already (a net built on a GPU is exact by
    default: torch's own default runs cuDNN convolutions in TF32)."""
    if not _numerics_chosen:
        set_numerics(fast=False)


def fast_mode() -> bool:
    """Whether :func:`set_numerics` chose the fast mode (nets built on a GPU then use channels_last)."""
    return _fast


def host_reads_allowed(t: torch.Tensor) -> bool:
    """Whether a data-dependent check on ``t`` is free (CPU tensor) rather than a device sync."""
    return t.device.type == "cpu"


def rng_state(device: torch.device) -> dict:
    """The global RNG states a run draws from on ``device`` (torch CPU, and the CUDA device's)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda" and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore :func:`rng_state`; a CUDA state is restored only onto a CUDA device (a snapshot made on
    a GPU resumes on a CPU with the CPU state, and back)."""
    if state.get("cpu") is not None:
        torch.set_rng_state(state["cpu"])
    if state.get("cuda") is not None and device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"], device)
