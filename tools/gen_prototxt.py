#!/usr/bin/env python3
"""Write prototxt/ (every paper setting's train net, solver and deploy nets) from rll_repro/recipes.

Also docs/coverage.md, the table of which command reproduces each published entry
(rll_repro/coverage.py; ``rll-repro reproduce --coverage`` prints it).

Usage:
    .venv/bin/python tools/gen_prototxt.py           # (re)write prototxt/rll, prototxt/osm_caa, README
    .venv/bin/python tools/gen_prototxt.py --check   # exit 1 if a committed file is stale

The files are generated, never copied from the original repositories; tests/test_recipes_*.py
prove each equal to its original (read in place from ../shared) as a caffe protobuf message.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; report stale files and exit 1 if any")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this one)")
    args = parser.parse_args(argv)

    from rll_repro import coverage
    from rll_repro.fileio import atomic_write_text
    from rll_repro.recipes import generate

    doc = args.root / coverage.DOC
    doc_text = coverage.markdown()
    doc_stale = not doc.exists() or doc.read_text(encoding="utf-8") != doc_text
    if args.check:
        stale = generate.stale_files(args.root) + ([coverage.DOC] if doc_stale else [])
        for rel in stale:
            print(f"stale: {rel} (run: .venv/bin/python tools/gen_prototxt.py)")
        return 1 if stale else 0
    changed = generate.write_all(args.root)
    if doc_stale:
        doc.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(doc, doc_text)
        changed.append(coverage.DOC)
    total = len(generate.generated_files())
    for rel in changed:
        print(f"wrote {rel}")
    print(f"{total} files generated, {len(changed)} changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
