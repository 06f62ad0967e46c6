"""Feature extraction through a deploy/test net, batch by batch, and feature files.

SPEC rll §5: the deploy nets output ``pool5/7x7_s1``; a multi-head deploy concatenates the **raw**
FC outputs of H (``pool5/fc``), L (``loss1/fc/bn/sc/fc``) and M (``loss2/fc/bn/sc/fc``) without a
per-head normalisation, and MATLAB L2-normalises the concatenation once at evaluation time.
:func:`extract_features` does the same with any blobs of any net: it saves the raw concatenation,
and the metrics (:mod:`rll_repro.eval.metrics`) normalise once. SPEC osm_caa §6: the OSM+CAA test
net ``test_M.prototxt`` also names its 1024-d feature ``pool5/7x7_s1``.

The net is anything with pycaffe's API (``rll_repro.net.Net``): ``net.inputs`` and
``net.forward(blobs=[...], **{input: batch}) -> {name: array}``; batches are preprocessed image
arrays (N x C x H x W float32) from any iterable, so this does not depend on the data module; the
last (remainder) batch may be smaller -- the net is reshaped to each batch's size, as the MATLAB
scripts do.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from rll_repro.errors import DataError, FormatError, NetError

DEPLOY_BLOB = "pool5/7x7_s1"
HEAD_BLOBS = {"H": "pool5/fc", "L": "loss1/fc/bn/sc/fc", "M": "loss2/fc/bn/sc/fc"}


def head_blobs(heads: str | Sequence[str]) -> list[str]:
    """``"H,L,M"`` -> the blobs of those heads, in the given order (the deploys use H, L, M)."""
    names = [h.strip().upper() for h in (heads.split(",") if isinstance(heads, str) else heads) if h.strip()]
    if not names:
        raise DataError("no heads given (use e.g. H,L,M)")
    unknown = [h for h in names if h not in HEAD_BLOBS]
    if unknown:
        raise DataError(f"unknown head(s) {', '.join(unknown)}: choose from H (pool5/fc), "
                        "L (loss1/fc/bn/sc/fc), M (loss2/fc/bn/sc/fc)")
    if len(set(names)) != len(names):
        raise DataError(f"head repeated in {','.join(names)}")
    return [HEAD_BLOBS[h] for h in names]


def batches_of(images: np.ndarray, batch_size: int) -> Iterable[np.ndarray]:
    """Consecutive batches of an in-memory array; the remainder batch comes last."""
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size}")
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size]


def extract_features(net, batches: Iterable, blobs: Sequence[str] = (DEPLOY_BLOB,), *,
                     input_blob: str | None = None, total: int | None = None, desc: str = "extract",
                     normalize: bool = False) -> np.ndarray:
    """Run ``net`` on every batch; return the per-image concatenation of ``blobs`` (raw, float32).

    ``batches`` yields image arrays, or tuples whose first element is the image array (as the data
    module's test loader yields ``(data, labels, indices)``). ``total`` (images) sizes the progress
    bar. ``normalize=True`` L2-normalises the concatenation once (MATLAB's rule, no epsilon).
    """
    import torch

    from rll_repro.progress import Progress

    blobs = list(blobs)
    if not blobs:
        raise DataError("no feature blobs given")
    inputs = list(getattr(net, "inputs", []))
    if input_blob is None:
        if not inputs:
            raise NetError("the net has no input blob to feed images into")
        input_blob = inputs[0]
    elif inputs and input_blob not in inputs:
        raise NetError(f"{input_blob!r} is not an input blob of the net (inputs: {', '.join(inputs)})")
    known = getattr(net, "blobs", None)
    if known is not None:
        missing = [b for b in blobs if b not in known]
        if missing:
            raise NetError(f"the net has no blob {missing[0]!r} (feature blobs must be produced by the net)")
    parts: list[np.ndarray] = []
    with Progress(total, desc) as bar, torch.no_grad():
        for batch in batches:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            images = np.asarray(images.numpy() if hasattr(images, "numpy") else images, dtype=np.float32)
            if images.ndim != 4:
                raise DataError(f"image batches must be N x C x H x W, got shape {images.shape}")
            n = images.shape[0]
            if n == 0:
                continue
            out = net.forward(blobs=blobs, **{input_blob: images})
            per_blob = []
            for name in blobs:
                arr = np.asarray(out[name], dtype=np.float32)
                if arr.shape[0] != n:
                    raise NetError(f"blob {name!r} has {arr.shape[0]} rows for a batch of {n} images")
                per_blob.append(arr.reshape(n, -1).copy())
            parts.append(np.concatenate(per_blob, axis=1))
            bar.update(n)
    if not parts:
        raise DataError("no images to extract features from")
    features = np.concatenate(parts, axis=0)
    if normalize:
        from rll_repro.eval.knn import l2_normalize

        features = l2_normalize(features)
    return features


def save_features(path: str | Path, features: np.ndarray, labels: np.ndarray | None = None) -> None:
    """Write features atomically: ``.npy`` (features only), ``.npz`` or ``.h5`` (``features`` + ``labels``)."""
    from rll_repro.fileio import atomic_write

    path = Path(path)
    features = np.asarray(features, dtype=np.float32)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        with atomic_write(path) as fh:
            np.save(fh, features)
    elif suffix == ".npz":
        arrays = {"features": features} | ({"labels": np.asarray(labels)} if labels is not None else {})
        with atomic_write(path) as fh:
            np.savez(fh, **arrays)
    elif suffix in (".h5", ".hdf5"):
        import io

        import h5py

        buf = io.BytesIO()
        with h5py.File(buf, "w") as f:
            f.create_dataset("features", data=features)
            if labels is not None:
                f.create_dataset("labels", data=np.asarray(labels))
        with atomic_write(path) as fh:
            fh.write(buf.getvalue())
    else:
        raise FormatError(f"{path}: feature files must end in .npy, .npz or .h5")


def load_array(path: str | Path, key: str = "features") -> np.ndarray:
    """An array from ``.npy``, or dataset ``key`` of an ``.npz`` / ``.h5`` file. Damaged, truncated
    or oversized files (a header claiming more than the file holds or than
    :mod:`rll_repro.limits` allows) are a one-line FormatError naming the file; nothing is
    allocated before the shape is checked."""
    from rll_repro.fileio import read_npy, read_npz

    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_file() and path.stat().st_size == 0:
        raise FormatError(f"{path}: empty file (expected a {suffix or 'feature'} array file)")
    if suffix == ".npy":
        return read_npy(path, key)
    if suffix == ".npz":
        arrays = read_npz(path, key)
        if key not in arrays:
            raise FormatError(f"{path}: no array {key!r} (has {', '.join(arrays) or 'none'})")
        return arrays[key]
    if suffix in (".h5", ".hdf5"):
        return _load_h5_dataset(path, key)
    raise FormatError(f"{path}: expected a .npy, .npz or .h5 file")


def _load_h5_dataset(path: Path, key: str) -> np.ndarray:
    import h5py

    from rll_repro.limits import check_allocation

    try:
        with h5py.File(path, "r") as f:
            if key not in f:
                raise FormatError(f"{path}: no dataset {key!r} (has {', '.join(f.keys()) or 'none'})")
            dataset = f[key]
            if not isinstance(dataset, h5py.Dataset) or dataset.dtype.kind not in "biuf":
                raise FormatError(f"{path}: {key!r} is not a numeric dataset")
            check_allocation(dataset.shape or (), dataset.dtype.itemsize, f"{path}: dataset {key!r}")
            return dataset[()]
    except FormatError:
        raise
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:  # h5py's errors on damaged files
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise FormatError(f"{path}: cannot read as .h5 file ({reason})") from None
