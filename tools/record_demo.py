#!/usr/bin/env python3
"""Record a demo run's table as the expected numbers (rll_repro/eval/published/demo.json).

Usage (after a change that moves the demo's float32 trajectory, e.g. another conv kernel):
    .venv/bin/rll-repro reproduce demo --all --out runs/demo-all
    .venv/bin/python tools/record_demo.py runs/demo-all/results.json "what changed / where measured"

Every method of the run's ``table`` replaces its recorded row (rounded to 0.01); rows the run lacks
are kept. ``reproduce demo`` then compares new runs with these numbers (5 points tolerance).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "rll_repro" / "eval" / "published" / "demo.json"


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2:
        print(__doc__, file=sys.stderr)
        return 2
    run = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    if not isinstance(run.get("table"), dict):
        print(f"{argv[0]}: no \"table\" (not a reproduce demo results.json)", file=sys.stderr)
        return 2
    recorded = json.loads(TARGET.read_text(encoding="utf-8"))
    entry = recorded["canvas-digits"]
    for method, row in run["table"].items():
        entry["table"][method] = {k: round(float(v), 2) for k, v in row.items()}
    if len(argv) == 2:
        recorded["_meta"]["measured"] = argv[1]
    sys.path.insert(0, str(ROOT))
    from rll_repro.fileio import atomic_write_text

    atomic_write_text(TARGET, json.dumps(recorded, indent=1) + "\n")
    print(f"recorded {len(run['table'])} rows into {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
