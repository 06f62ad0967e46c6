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
    from rll_repro.net.parallel import init_from_env, is_main_process

    set_numerics(fast=bool(getattr(args, "fast", False)))
    device = getattr(args, "device", None)
    # under torchrun: join the process group (NCCL on cuda, gloo on cpu), one GPU per local rank
    ranked = init_from_env(resolve_device(device))
    if not is_main_process():  # rank 0 prints the verb's report (and writes the log)
        import os
        import sys

        sys.stdout = open(os.devnull, "w", encoding="utf-8")
    if device is not None or ranked != resolve_device(device):
        return set_default_device(ranked)
    return resolve_device(None)
