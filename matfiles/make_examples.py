"""Regenerate the example lists in this folder: ``.venv/bin/python matfiles/make_examples.py``.

Builds tiny fake dataset folders (the same ones the writer tests use) in a temporary directory and
runs the make-lists writers on them, so every file here is exactly what ``rll-repro make-lists``
writes (paths are synthetic and relative to the dataset root).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))

from test_data_writers import fake_cub, fake_inshop, fake_market, fake_sop  # noqa: E402

from rll_repro.data.writers import write_lists  # noqa: E402

EXAMPLES = [
    # (file, dataset, fake builder, split, version, boxes)
    ("SOP_TrainImagePathBoxCell.mat", "sop", fake_sop, "train", "v5", False),
    ("SOP_TestImagePathBoxCell.mat", "sop", fake_sop, "test", "v5", False),
    ("InshopClothes_TrainImagePathBoxCell.mat", "inshop", fake_inshop, "train", "v7.3", False),
    ("InshopClothes_EvaImagePathBoxCell.mat", "inshop", fake_inshop, "eval", "v7.3", False),
    ("Market1501TrainImagePathBoxCell.mat", "market", fake_market, "train", "v7.3", False),
    ("Market1501_evaluation.mat", "market", fake_market, "evaluation", "v7.3", False),
    ("CUB_200_2011_TrainImagePathBoxCell_boxes.mat", "cub", fake_cub, "train", "v5", True),
]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, dataset, build, split, version, boxes in EXAMPLES:
            root = build(Path(tmp) / dataset)
            write_lists(dataset, root, HERE / name, split, version=version, boxes=boxes)
            print("wrote", HERE / name)


if __name__ == "__main__":
    main()
