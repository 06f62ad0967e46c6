"""Evaluation under torchrun: each rank extracts a contiguous share of the test list and the shares
are gathered in rank order, so 2 gloo processes give the one-process features and Recall@K.
Tolerance: features within 1e-6 of their scale (per-image TEST-phase forward; only the batch
boundaries differ between the runs) and identical Recall@K."""
from __future__ import annotations

import datetime
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "prototxt/digits/deploy.prototxt"


def _evaluate():
    from rll_repro.data.lists import ImageList
    from rll_repro.eval.protocols import evaluate_protocol
    from rll_repro.net import Net

    rng = np.random.default_rng(5)
    images = rng.standard_normal((23, 1, 8, 8)).astype(np.float32)
    test = ImageList(paths=None, class_ids=(np.arange(23) % 4 + 1).astype(np.int64), images=list(images))
    net = Net(str(DEPLOY), phase="test", seed=2, device="cpu")
    for layer, blobs in net.params.items():  # random weights; BatchNorm: mean 0, variance 1, factor 1
        for i, blob in enumerate(blobs):
            blob.data[...] = (1.0 if i else 0.0) if net.layers[net.layer_names.index(layer)].param.type == "BatchNorm" \
                else rng.standard_normal(blob.shape).astype(np.float32) * 0.3
    out = evaluate_protocol(net, "cub", test, transform=None, blobs=[net.outputs[0]], batch_size=5,
                            recall_ks=(1, 2, 4))
    return out.features, out.metrics


def _worker(rank, init_file, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                                timeout=datetime.timedelta(seconds=120))
        feats, result = _evaluate()
        np.savez(Path(out_dir) / f"rank{rank}.npz", feats=feats, **{k: v for k, v in result.items()})
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001
        (Path(out_dir) / f"rank{rank}.error").write_text(traceback.format_exc())
        raise


def test_two_ranks_evaluate_the_one_process_features_and_recall(tmp_path):
    feats, result = _evaluate()
    try:
        mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True,
                           start_method="spawn")
    except Exception as exc:  # noqa: BLE001
        raise AssertionError("".join(p.read_text() for p in tmp_path.glob("*.error")) or str(exc)) from None
    for r in range(2):
        z = np.load(tmp_path / f"rank{r}.npz")
        np.testing.assert_allclose(z["feats"], feats, rtol=0, atol=1e-6 * np.abs(feats).max())
        for k, v in result.items():
            assert float(z[k]) == pytest.approx(v), k
