"""The released OSM+CAA settings (osm_caa SPEC §1, §5, §6, §8, §9): CARS196, CUB, MARS, LPW.

CARS196 and CUB share one net layout (three weighted-softmax heads + the image-level OSM+CAA loss,
56 = 8 classes x 7 images); MARS and LPW add the tracklet branch (54 = 3 identities x 2 tracklets x
9 frames). Every dataset is tested with the same ``test_M`` net (the 1024-d ``loss2/fc/bn/sc``).
The bounding-box variants of CARS196/CUB reuse their nets and solvers with another schedule and data.
"""
from __future__ import annotations

from dataclasses import replace

from . import bninception as bn
from .netspec import solver
from .settings import (OSM_COMMIT, OSM_REPOSITORY, SAMPLER_OSM, SAMPLER_OSM_VIDEO, TRANSFORM_OSM,
                       Deploy, GeneratedFile, Original, Setting, register)

TEST_BATCH = 64  # forward_images_data.m


def _original(path: str) -> Original:
    return Original(OSM_REPOSITORY, OSM_COMMIT, path)


def _osm_solver(base_lr, stepvalues, weight_decay):
    """The released OSM+CAA solver: multistep SGD, gamma 0.5, momentum 0.9; no max_iter (the
    MATLAB loop stops training). ``net`` is relative to the solver's own directory."""
    return solver(net="train.prototxt", base_lr=base_lr, lr_policy="multistep", gamma=0.5,
                  stepvalue=list(stepvalues), momentum=0.9, weight_decay=weight_decay)


def _files(key, orig_dir, train_fn, solver_fn):
    folder = f"prototxt/osm_caa/{key}"
    train = GeneratedFile(f"{folder}/train.prototxt", "train",
                          _original(f"{orig_dir}/train.prototxt"), train_fn)
    solv = GeneratedFile(f"{folder}/solver.prototxt", "solver",
                         _original(f"{orig_dir}/solver.prototxt"), solver_fn)
    test = GeneratedFile(f"{folder}/test_M.prototxt", "deploy",
                         _original(f"{orig_dir}/test_M.prototxt"), lambda: bn.osm_test_net().net)
    return train, solv, test


def _setting(name, dataset, description, files, checkpoints, published, **kw) -> Setting:
    train, solv, test = files
    return Setting(
        name=name, paper="osm_caa", dataset=dataset, description=description,
        train=train, solver=solv,
        deploys=(Deploy("M", ("M",), test, TEST_BATCH, checkpoints, published),),
        train_transform=TRANSFORM_OSM, test_transform=TRANSFORM_OSM, input_size=224,
        published=published, **kw)


_IMAGE = dict(classes_per_batch=8, images_per_class=7, sampler=SAMPLER_OSM,
              recall_ks=(1, 2, 4, 8, 16, 32))
_VIDEO = dict(classes_per_batch=3, images_per_class=18, tracklets_per_class=2,
              frames_per_tracklet=9, sampler=SAMPLER_OSM_VIDEO, recall_ks=(1, 5, 10, 20))

# --------------------------------------------------------------------------------------- CARS196
_CARS_FILES = _files(
    "cars", "CARS196_V01/M_WIDE_ASiamese_V62_e1",
    lambda: bn.osm_train_net(56, 98, osm_sigma=0.8).net,
    lambda: _osm_solver(0.001, (1500, 3000, 4500, 6000), 0.00005))
CARS = register(_setting(
    "osm-cars", "CARS196",
    "CARS196 raw images, OSM+CAA, batch 56 = 8x7, 10k iterations (M_WIDE_ASiamese_V62_e1)",
    _CARS_FILES, tuple(range(1000, 10001, 250)),
    ("osm_caa/CARS196/OSM+CAA (Ours) [raw images]",
     "osm_caa/CARS196/OSM+CAA repo snapshot iter 7000 [raw images]"),
    max_iter=10000, save_start=1000, save_interval=250, eval_protocol="cars",
    data_files=("train_data_cell.mat", "test_data_cell.mat"),
    notes="The paper's numbers are the iteration-7000 snapshot's. Images are preprocessed "
          "offline into the .mat cells (no online augmentation).", **_IMAGE))
CARS_BBOX = register(replace(
    CARS, name="osm-cars-bbox",
    description="CARS196 bounding-box crops, OSM+CAA, same net and solver, 8k iterations",
    max_iter=8000, save_start=2000, save_interval=500,
    deploys=(replace(CARS.deploys[0], checkpoints=tuple(range(2000, 8001, 500)),
                     published=("osm_caa/CARS196/OSM+CAA (Ours) [cropped images]",
                                "osm_caa/CARS196/OSM+CAA repo snapshot iter 7000 [cropped images]")),),
    data_files=("bbox_train_data_cell.mat", "bbox_test_data_cell.mat"),
    published=("osm_caa/CARS196/OSM+CAA (Ours) [cropped images]",
               "osm_caa/CARS196/OSM+CAA repo snapshot iter 7000 [cropped images]")))

# ------------------------------------------------------------------------------------------ CUB
_CUB_FILES = _files(
    "cub", "CUB_V01/M_WIDE_ASiamese_V42_e1",
    lambda: bn.osm_train_net(56, 100, osm_sigma=0.8).net,
    lambda: _osm_solver(0.0005, (500, 1000, 1500, 1501, 2000, 2001), 0.0003))
CUB = register(_setting(
    "osm-cub", "CUB-200-2011",
    "CUB-200-2011 raw images, OSM+CAA, batch 56 = 8x7, 3k iterations (M_WIDE_ASiamese_V42_e1)",
    _CUB_FILES, tuple(range(1000, 3001, 250)),
    ("osm_caa/CUB-200-2011/OSM+CAA (Ours) [raw images]",
     "osm_caa/CUB-200-2011/OSM+CAA repo snapshot iter 2000 [raw images]"),
    max_iter=3000, save_start=1000, save_interval=250, eval_protocol="cub",
    data_files=("CUB_200_2011_TrainImageDataCell.mat", "CUB_200_2011_TestImageDataCell.mat"),
    notes="The paper's numbers are the iteration-2000 snapshot's. The duplicated step values "
          "(1500, 1501, 2000, 2001) are the original's.", **_IMAGE))
CUB_BBOX = register(replace(
    CUB, name="osm-cub-bbox",
    description="CUB-200-2011 bounding-box crops, OSM+CAA, same net, solver and schedule",
    deploys=(replace(CUB.deploys[0],
                     published=("osm_caa/CUB-200-2011/OSM+CAA (Ours) [cropped images]",
                                "osm_caa/CUB-200-2011/OSM+CAA repo snapshot iter 2000 [cropped images]")),),
    data_files=("Box_CUB_200_2011_TrainImageDataCell.mat", "Box_CUB_200_2011_TestImageDataCell.mat"),
    published=("osm_caa/CUB-200-2011/OSM+CAA (Ours) [cropped images]",
               "osm_caa/CUB-200-2011/OSM+CAA repo snapshot iter 2000 [cropped images]")))

# ----------------------------------------------------------------------------------------- MARS
_MARS_FILES = _files(
    "mars", "MARS_V01/M_WIDE_WF_WIDE_ASiamese_V20_e2",
    lambda: bn.osm_train_net(54, 625, osm_sigma=1.0, tracklets=6).net,
    lambda: _osm_solver(0.001, (20000, 30000, 40000, 50000), 0.0005))
MARS = register(_setting(
    "osm-mars", "MARS",
    "MARS video re-id, OSM+CAA with tracklet branch, batch 54 = 3 ids x 2 tracklets x 9 frames, "
    "100k iterations (M_WIDE_WF_WIDE_ASiamese_V20_e2)",
    _MARS_FILES, tuple(range(40000, 75001, 5000)),
    ("osm_caa/MARS/OSM+CAA (Ours)", "osm_caa/MARS/OSM+CAA repo iter 60000"),
    max_iter=100000, save_start=40000, save_interval=5000, eval_protocol="mars",
    data_files=("train_data_r.mat", "test_data_r.mat", "query_IDX.mat"),
    notes="Tracklet feature = mean of per-frame test_M features. The result files cover "
          "iterations 40000-75000; the paper's numbers are iteration 60000's.", **_VIDEO))

# ------------------------------------------------------------------------------------------ LPW
_LPW_FILES = _files(
    "lpw", "LPW_V01/M_WIDE_WF_WIDE_ASiamese_V20_e5",
    lambda: bn.osm_train_net(54, 1975, osm_sigma=0.6, tracklets=6).net,
    lambda: _osm_solver(0.001, (30000, 40000, 50000), 0.0001))
LPW = register(_setting(
    "osm-lpw", "LPW",
    "LPW video re-id, OSM+CAA with tracklet branch, batch 54 = 3 ids x 2 tracklets x 9 frames, "
    "65k iterations (M_WIDE_WF_WIDE_ASiamese_V20_e5)",
    _LPW_FILES, tuple(range(50000, 65001, 5000)),
    ("osm_caa/LPW/OSM+CAA repo iter 55000",),
    max_iter=65000, save_start=50000, save_interval=5000, eval_protocol="lpw",
    data_files=("train_data_tracklet_format.mat", "test_data_tracklet_format.mat"),
    notes="Labels are fed as label - 1. Probe = first 756 test tracklets (camera 2); CMC only.",
    **_VIDEO))
