"""Caffe file io speed on a BN-Inception-sized caffemodel (~11.3M float32 values, ~45 MB).

Builds a synthetic net in a temporary folder with BN-Inception's blob layout (Conv + BatchNorm
(3 blobs) + Scale (2 blobs) blocks and an InnerProduct head), then times:

  parse          read_caffemodel (file -> NetParameter)
  to arrays      weights_from_net (NetParameter -> {layer: [ndarray]})
  from arrays    net_with_weights (arrays -> NetParameter)
  write          write_caffemodel (NetParameter -> file, atomic)
  round trip     read -> write, checks the bytes are identical

Targets (issue 2): parse <= 1 s and write <= 1 s. Run: .venv/bin/python bench/bench_caffe_io.py
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def make_net(target_values: int, seed: int = 0):
    """A NetParameter of Conv/BatchNorm/Scale blocks totalling about ``target_values`` floats."""
    from rll_repro.caffe import caffe_pb2
    from rll_repro.caffe.weights import net_with_weights

    rng = np.random.default_rng(seed)
    net = caffe_pb2.NetParameter(name="bn_inception_sized")
    weights, total, k = {}, 0, 0
    channel_plan = [64, 64, 192, 64, 96, 128, 32, 160, 192, 224, 256, 320, 352]
    while total < target_values - 1024 * 1000:
        c_out = channel_plan[k % len(channel_plan)]
        c_in = channel_plan[(k + 5) % len(channel_plan)]
        ksize = (1, 3, 1, 3, 5)[k % 5]
        name = f"inception_{k // 6}/conv_{k % 6}"
        for suffix, layer_type, blobs in (
            ("", "Convolution", [rng.standard_normal((c_out, c_in, ksize, ksize), dtype=np.float32)]),
            ("/bn", "BatchNorm", [rng.standard_normal(c_out, dtype=np.float32),
                                  rng.random(c_out, dtype=np.float32), np.array([999.98], np.float32)]),
            ("/scale", "Scale", [rng.standard_normal(c_out, dtype=np.float32),
                                 rng.standard_normal(c_out, dtype=np.float32)]),
        ):
            layer = net.layer.add(name=name + suffix, type=layer_type)
            weights[layer.name] = blobs
            total += sum(b.size for b in blobs)
        k += 1
    fc = net.layer.add(name="fc", type="InnerProduct")
    weights[fc.name] = [rng.standard_normal((1000, 1024), dtype=np.float32),
                        rng.standard_normal(1000, dtype=np.float32)]
    total += 1000 * 1024 + 1000
    return net_with_weights(net, weights), total


def timed(fn, repeat: int):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--values", type=int, default=11_300_000, help="float32 values in the model")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from rll_repro.caffe import io as caffe_io
    from rll_repro.caffe.weights import net_with_weights, weights_from_net

    net, total = make_net(args.values)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.caffemodel"
        copy = Path(tmp) / "copy.caffemodel"
        t_write, _ = timed(lambda: caffe_io.write_caffemodel(path, net), args.repeat)
        size = path.stat().st_size
        t_parse, parsed = timed(lambda: caffe_io.read_caffemodel(path), args.repeat)
        t_arrays, weights = timed(lambda: weights_from_net(parsed), args.repeat)
        t_from, _ = timed(lambda: net_with_weights(parsed, weights), args.repeat)
        t_round, _ = timed(lambda: caffe_io.write_caffemodel(copy, caffe_io.read_caffemodel(path)), args.repeat)
        identical = path.read_bytes() == copy.read_bytes()

    rows = [
        ("parse (read_caffemodel)", t_parse, "<= 1 s"),
        ("write (write_caffemodel)", t_write, "<= 1 s"),
        ("to arrays (weights_from_net)", t_arrays, ""),
        ("from arrays (net_with_weights)", t_from, ""),
        ("read + write round trip", t_round, ""),
    ]
    print(f"caffemodel: {len(net.layer)} layers, {total:,} float32 values, {size / 1e6:.1f} MB "
          f"(best of {args.repeat}; 1 torch thread; machine shared with other jobs)")
    print(f"{'operation':<34}{'seconds':>10}  target")
    for name, seconds, target in rows:
        print(f"{name:<34}{seconds:>10.3f}  {target}")
    print(f"round trip byte-identical: {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
