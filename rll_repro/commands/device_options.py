"""``--device`` and ``--fast``, shared by the verbs that run nets (train, reproduce, eval,
eval-features, forward, export)."""
from __future__ import annotations

FAST_HELP = ("opt-in speed mode on GPUs: TF32 convolutions and matmuls, cudnn.benchmark, "
             "nondeterministic kernels, channels_last; numbers move by ~1e-3 relative from Caffe's "
             "(default: exact, Caffe's float32 arithmetic)")


def add_device_arguments(parser, fast: bool = True) -> None:
    from rll_repro.device import DEVICE_HELP

    parser.add_argument("--device", default=None, metavar="DEV", help=DEVICE_HELP)
    if fast:
        parser.add_argument("--fast", action="store_true", help=FAST_HELP)


def device_from_args(args):
    """The torch.device of ``--device`` after applying the numerics ``--fast`` asks for; a given
    ``--device`` also becomes the process default, so every net the verb builds lands there."""
    from rll_repro.device import resolve_device, set_default_device, set_numerics

    set_numerics(fast=bool(getattr(args, "fast", False)))
    device = getattr(args, "device", None)
    if device is not None:
        return set_default_device(device)
    return resolve_device(None)
