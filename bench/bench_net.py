"""Speed of the generic net builder vs a plain PyTorch module of the same architecture.

The BN-Inception SOP train net (../shared/reference/rll/original/SOP_Simp_25042020/150_T10_pn04_v50/
train.prototxt, read in place) runs forward+backward at 227 px. The "plain" module is the standalone
PyTorch source that ``rll-repro export`` generates from the same net (rll_repro.export.pysource: one
nn.Conv2d / nn.MaxPool2d / ... attribute per Caffe layer, in-place ReLU, ceil-mode pooling,
torch.cat, nn.Linear, Caffe's L2 Normalization), cut at the three embeddings, with
BatchNorm+Scale fused into one affine batch normalisation (``--fold-bn``); its loss is a plain
squared-hinge contrastive loss on the three embeddings (the port runs the RLL loss layers; at batch
32 the loss is < 1% of the time). A second plain module keeps Caffe's arithmetic (normalise, then
x·γ, then + β, as separate roundings): the fused BatchNorm is faster but not bit-compatible, so the
builder's own overhead is the difference to that one.

    .venv/bin/python bench/bench_net.py [--batch 32] [--iters 3] [--threads 1]

Prints images/s for: Net.forward_backward (with and without keeping every blob diff), the plain module,
and both in channels_last memory format; then the TEST-phase forward of the SOP deploy net with the
autograd graph, under no_grad / inference_mode, and in channels_last. Timings on a shared 2-core
machine are noisy.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PROTOTXT = REPO.parent / "shared/reference/rll/original/SOP_Simp_25042020/150_T10_pn04_v50/train.prototxt"
DEPLOY = REPO.parent / "shared/reference/rll/original/SOP_Simp_25042020/deploy_prototxts/test_concat_d64.prototxt"


def build_plain(net, fused_bn: bool = True):
    """The plain module: rll_repro.export's standalone PyTorch source for ``net`` (the one generator
    behind ``rll-repro export OUT.py``), written up to the three embeddings the RLL loss layers read.

    ``fused_bn``: each BatchNorm+Scale as one affine batch normalisation (``--fold-bn``, what one
    writes by hand; it rounds differently from Caffe), else Caffe's arithmetic: normalise, then x·γ,
    then + β. In the TRAIN phase its BatchNorms use the batch statistics, as the net's do."""
    from rll_repro.export.pysource import generate, instantiate

    embeddings = [net.bottom_names[name][0] for name, lp in zip(net.layer_names, net.layer_params)
                  if lp.type.startswith("DistanceWeighted")]
    return instantiate(generate(net, outputs=embeddings, fold_bn=fused_bn)).train()


def plain_loss(embeddings, labels):
    total = 0.0
    same = labels[:, None] == labels[None, :]
    for e in embeddings:
        e = e.flatten(1)
        d = torch.cdist(e, e)
        total = total + torch.where(same, d.pow(2), F.relu(1.2 - d).pow(2)).sum() / 2
    return total


def timed(fn, iters):
    fn()  # warm-up
    best = float("inf")
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def interleaved(variants, iters):
    """Best time of each variant over ``iters`` rounds, the variants taking turns within a round so
    that load from other processes hits all of them alike."""
    for _, fn, setup in variants:
        setup()
        fn()  # warm-up
    best = {name: float("inf") for name, _, _ in variants}
    for _ in range(iters):
        for name, fn, setup in variants:
            setup()
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return [(name, best[name]) for name, _, _ in variants]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=227)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--prototxt", default=str(PROTOTXT))
    parser.add_argument("--deploy", default=str(DEPLOY), help="deploy net for the TEST forward table ('' to skip)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from rll_repro.caffe.io import read_net_prototxt
    from rll_repro.net import Net

    if not Path(args.prototxt).exists():
        print(f"skipped: {args.prototxt} not found (../shared is needed)")
        return 0
    net_param = read_net_prototxt(args.prototxt)
    net = Net(net_param, phase="train", seed=0)
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(args.batch, 3, args.size, args.size, generator=gen).numpy()
    label = np.repeat(np.arange(args.batch // 4 + 1), 4)[: args.batch].astype(np.float32).reshape(-1, 1, 1, 1)
    net.blobs["data"].reshape(*data.shape)
    net.blobs["label"].reshape(*label.shape)
    net.reshape()
    net.blobs["data"].data[...] = data
    net.blobs["label"].data[...] = label

    def run_net():
        net.clear_param_diffs()
        net.forward_backward()

    plain = build_plain(net)
    x = torch.from_numpy(data)
    y = torch.from_numpy(label.ravel())

    def run_plain(model=plain, inp=x):
        model.zero_grad(set_to_none=False)
        loss = plain_loss(model(inp, y), y)
        loss.backward()

    net_cl = Net(net_param, phase="train", seed=0)
    net_cl.blobs["data"].reshape(*data.shape)
    net_cl.blobs["label"].reshape(*label.shape)
    net_cl.reshape()
    net_cl.set_memory_format(torch.channels_last)
    net_cl.blobs["data"].data[...] = data
    net_cl.blobs["label"].data[...] = label
    plain_cl = build_plain(net).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def keep(flag):
        return lambda: setattr(net, "keep_blob_diffs", flag)

    def nothing():
        return None

    def run_net_cl():
        net_cl.clear_param_diffs()
        net_cl.forward_backward()

    plain_caffe = build_plain(net, fused_bn=False)
    rows = interleaved(
        [
            ("plain PyTorch module", run_plain, nothing),
            ("plain module, Caffe's BN-then-Scale arithmetic", lambda: run_plain(plain_caffe), nothing),
            ("Net.forward_backward (solver default)", run_net, keep(None)),
            ("Net.forward_backward, every blob diff kept", run_net, keep(True)),
            ("plain PyTorch module, channels_last", lambda: run_plain(plain_cl, x_cl), nothing),
            ("Net.forward_backward, channels_last", run_net_cl, nothing),
        ],
        args.iters,
    )
    t_plain = rows[0][1]

    print(f"BN-Inception SOP train net, batch {args.batch} at {args.size} px, {args.threads} thread(s), "
          f"best of {args.iters} interleaved rounds after one warm-up each")
    print(f"{'variant':48s} {'s/iter':>8s} {'images/s':>9s} {'vs plain':>9s}")
    for name, t in rows:
        print(f"{name:48s} {t:8.3f} {args.batch / t:9.2f} {t / t_plain:8.3f}x")
    if args.deploy and Path(args.deploy).exists():
        deploy_table(args, data)
    return 0


def deploy_table(args, data):
    """TEST-phase forward of a deploy net (feature extraction): autograd on/off, channels_last."""
    from rll_repro.net import Net

    net = Net(args.deploy, phase="test", seed=0)
    for layer in net.layers:  # unit running statistics (all-zero ones would blow activations up)
        if layer.param.type == "BatchNorm":
            layer.blobs[1].data.fill_(1.0)
            layer.blobs[2].data.fill_(1.0)
    net.forward(data=data)
    reference = {k: v.copy() for k, v in net.forward(data=data).items()}
    net_cl = Net(args.deploy, phase="test", seed=0)
    net_cl.load_state_dict(net.state_dict())
    net_cl.set_memory_format(torch.channels_last)

    def under(mode, model):
        def run():
            with mode():
                model.forward(data=data)
        return run

    rows = interleaved(
        [
            ("forward (graph recorded)", under(torch.enable_grad, net), lambda: None),
            ("forward under torch.no_grad", under(torch.no_grad, net), lambda: None),
            ("forward under torch.inference_mode", under(torch.inference_mode, net), lambda: None),
            ("inference_mode + channels_last", under(torch.inference_mode, net_cl), lambda: None),
        ],
        args.iters,
    )
    with torch.inference_mode():
        same = all(np.array_equal(reference[k], v) for k, v in net.forward(data=data).items())
        out = net_cl.forward(data=data)
        diff = max(float(np.abs(out[k] - reference[k]).max() / np.abs(reference[k]).max()) for k in out)
    print()
    print(f"deploy net {Path(args.deploy).name} (TEST phase) forward, batch {data.shape[0]}")
    print(f"{'variant':48s} {'s/iter':>8s} {'images/s':>9s}")
    for name, t in rows:
        print(f"{name:48s} {t:8.3f} {data.shape[0] / t:9.2f}")
    print(f"inference_mode output identical to the recorded-graph forward: {same}; "
          f"channels_last max relative difference {diff:.1e}")


if __name__ == "__main__":
    raise SystemExit(main())
