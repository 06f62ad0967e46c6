"""The ``rll-repro`` command: one verb per sub-module of :mod:`rll_repro.commands`.

Each command module defines ``HELP`` (one line), ``DESCRIPTION`` (the text ``--help`` teaches, with
examples), ``add_arguments(parser)`` and ``run(args) -> int``. Modules import heavy libraries inside
``run`` so that ``rll-repro --help`` stays instant. Any :class:`~rll_repro.errors.RLLReproError`
and any OSError (a missing input, a full disk, a read-only file system) becomes one line on stderr
naming the file, and exit code 2; ``--debug`` shows tracebacks.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from rll_repro import __version__

# verb -> module under rll_repro.commands (module names use underscores)
COMMANDS = {
    "inspect": "inspect_",
    "convert": "convert",
    "forward": "forward",
    "train": "train",
    "eval": "eval_",
    "eval-features": "eval_features",
    "diff": "diff",
    "reproduce": "reproduce",
    "make-lists": "make_lists",
    "export": "export",
}

EPILOG = """\
typical session:
  rll-repro inspect googlenet_bn.caffemodel          what is in a model file
  rll-repro convert model.caffemodel model.npz       weights to numpy (or .pt, or back)
  rll-repro forward net.prototxt --weights W --inputs in.npz --out out.npz
  rll-repro train --solver prototxt/rll/sop/solver.prototxt --weights googlenet_bn.caffemodel
  rll-repro eval-features feats.npy labels.npy --protocol sop --out results.json
  rll-repro diff results.json --against 'rll/SOP/paper/RLL-(L,M,H)'
  rll-repro reproduce digits                          the shipped end-to-end demo (no download)

run 'rll-repro VERB --help' for the details of one verb."""


def _load(verb: str):
    return importlib.import_module(f"rll_repro.commands.{COMMANDS[verb]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rll-repro",
        description="Exact PyTorch reproduction of the Caffe code of Ranked List Loss (CVPR'19) "
        "and OSM+CAA (AAAI'19): Caffe files, nets, solvers, data lists, evaluation.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in COMMANDS:
        try:
            module = _load(verb)
        except ModuleNotFoundError as exc:  # a verb whose module is not written yet
            if exc.name and exc.name.startswith("rll_repro.commands"):
                continue
            raise
        p = sub.add_parser(
            verb,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,  # keep a --debug given before the verb
                       help="show full tracebacks on errors")
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from rll_repro.errors import RLLReproError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    _paths_print_as_given()
    from rll_repro.host_memory import retain_freed_memory

    retain_freed_memory()  # freed tensors stay in the heap for the next step (host_memory)
    try:
        return int(args._run(args) or 0)
    except BrokenPipeError:
        # The reader went away (`rll-repro inspect --json X | head`): stop quietly, as Unix tools do
        # on SIGPIPE, and keep Python from complaining when it flushes stdout at exit.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (RLLReproError, OSError) as exc:  # OSError: missing input, full disk, read-only file system ...
        if args.debug:
            raise
        print(f"rll-repro {args.verb}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rll-repro {args.verb}: interrupted", file=sys.stderr)
        return 130


def _one_line(exc: Exception) -> str:
    """The error's first line; an OSError as 'FILE: what' (e.g. 'out.npz: No space left on device')."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    text = str(exc)
    return text.splitlines()[0] if text.strip() else type(exc).__name__


def _paths_print_as_given() -> None:
    """File names from the command line that are not UTF-8 (held as surrogate escapes) print as
    their original bytes instead of raising UnicodeEncodeError in 'wrote FILE' lines."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and getattr(stream, "errors", "") == "strict":
            reconfigure(errors="surrogateescape")


if __name__ == "__main__":
    sys.exit(main())
