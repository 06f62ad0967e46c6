"""Copy the ../shared oracle cases the GPU check needs into a git-ignored folder that fits the
device machine's 64 MiB carry (everything but the 57 MB net_sop_train case and the SOP deploy case
that needs its weights). Usage: python tools/copy_oracle.py .gpu_oracle"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIP = {"net_sop_train", "net_sop_deploy_test"}


def main(dest: str) -> int:
    shared = REPO.parent / "shared"
    out = Path(dest)
    for src in sorted((shared / "oracle").glob("*/*")):
        if src.name in SKIP or not src.is_dir():
            continue
        target = out / "oracle" / src.parent.name / src.name
        shutil.copytree(src, target, dirs_exist_ok=True)
    for part in ("reference/rll/original", "reference/osm_caa/original"):  # small prototxts the tests read
        if (shared / part).is_dir():
            shutil.copytree(shared / part, out / part, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("*.caffemodel"))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ".gpu_oracle"))
