"""rll-repro make-lists: the original .mat image lists from a standard dataset folder."""
from __future__ import annotations

HELP = ("build the original .mat image lists (SOP, In-shop, Market-1501, CUB, Cars196, MARS, LPW) "
        "from a dataset folder")
DESCRIPTION = """\
Write OUT.mat with the variables the original MATLAB scripts load, from a dataset's standard layout
and standard split (relative paths unless --absolute; load with --data-root ROOT):

  sop     ROOT = Stanford_Online_Products (Ebay_train.txt, Ebay_test.txt)
          train|test -> TrainImagePathBoxCell|TestImagePathBoxCell, class_ids (relabelled 1..K)
  inshop  ROOT = In-shop folder (list_eval_partition.txt, img/)
          train -> TrainImagePathBoxCell, class_ids (1..3997 by sorted item id)
          eval  -> TestImagePathBoxCell = [query; gallery], class_ids (joint relabel), query_num
  market  ROOT = Market-1501 (bounding_box_train/, bounding_box_test/, query/, gt_bbox/)
          train -> ImagePathBoxCell, class_ids (1..751)
          evaluation -> testID testCAM testImagesCell queryID queryCAM queryImagesCell
                        multiQueryImagesCell (gt_bbox images of the query's id and camera)
  cub     ROOT = CUB_200_2011 (images.txt, image_class_labels.txt, bounding_boxes.txt, images/)
          train = classes 1-100, test = 101-200; class_ids are the original ids
  cars    ROOT = Cars196 with cars_annos.mat + car_ims/ (or devkit/cars_train_annos.mat and
          devkit/cars_test_annos_withlabels.mat + cars_train/, cars_test/)
          train = classes 1-98, test = 99-196
  mars    ROOT = MARS (bbox_train/, bbox_test/, info/ of the evaluation kit: train_name.txt,
          test_name.txt, tracks_train_info.mat, tracks_test_info.mat, query_IDX.mat)
          train -> train_tracklets (frame-path cells), train_labels (0..624, fed as stored)
          test  -> test_tracklets, test_labels (person ids; 0 junk, -1 distractors), test_cameras
          query -> query_IDX (1-based test tracklet indices)
  lpw     ROOT = LPW's pep_256x128 (scen1..3/view<V>/<pid>/<frame>.jpg; one tracklet per folder)
          train = scenes 2+3 -> train_tracklets, train_labels (1..1975 over (scene, pid))
          test = scene 1, view-2 tracklets first (the probes) -> test_tracklets, test_labels,
          test_cameras (view)

--boxes (cub, cars) writes N x 2 cells {path, [x1 y1 x2 y2]} (1-based inclusive).
--osm-data (cub, cars) writes the OSM+CAA offline data cells instead (224x224x3 single images,
preprocessed as the original process_image.m: resize 224, BGR, mean subtraction; with --boxes the
bbox variant). --v7.3 writes MATLAB's HDF5 format (what the originals used), else v5.

examples:
  rll-repro make-lists sop /data/Stanford_Online_Products SOP_TrainImagePathBoxCell.mat
  rll-repro make-lists sop /data/Stanford_Online_Products SOP_TestImagePathBoxCell.mat --split test
  rll-repro make-lists inshop /data/InShop InshopClothes_EvaImagePathBoxCell.mat --split eval --v7.3
  rll-repro make-lists market /data/Market-1501 Market1501_evaluation.mat --split evaluation
  rll-repro make-lists cars /data/cars196 bbox_train_data_cell.mat --boxes --osm-data
  rll-repro make-lists mars /data/MARS query_IDX.mat --split query
  rll-repro make-lists lpw /data/pep_256x128 test_data_tracklet_format.mat --split test
"""


def add_arguments(parser) -> None:
    parser.add_argument("dataset", choices=["sop", "inshop", "market", "cub", "cars", "mars", "lpw"], help="dataset layout")
    parser.add_argument("root", metavar="ROOT", help="the dataset folder")
    parser.add_argument("out", metavar="OUT.mat", help="output .mat file (written atomically)")
    parser.add_argument("--split", default="train",
                        help="train (default), test (sop, cub, cars, mars, lpw), eval (inshop), evaluation (market), "
                             "query (mars)")
    parser.add_argument("--v7.3", dest="v73", action="store_true", help="write MATLAB v7.3 (HDF5) instead of v5")
    parser.add_argument("--absolute", action="store_true", help="write absolute image paths")
    parser.add_argument("--boxes", action="store_true", help="N x 2 {path, box} cells (cub, cars)")
    parser.add_argument("--osm-data", action="store_true", help="OSM+CAA preprocessed 224x224 data cells (cub, cars)")
    parser.add_argument("--annotations", help="cars: path of cars_annos.mat if not in ROOT")
    parser.add_argument("--check-images", action="store_true", help="fail if any listed image is missing")


def run(args) -> int:
    import numpy as np

    from rll_repro.data.writers import write_lists

    variables = write_lists(
        args.dataset, args.root, args.out, args.split, version="v7.3" if args.v73 else "v5",
        absolute=args.absolute, boxes=args.boxes, osm_data=args.osm_data, check_images=args.check_images,
        annotations=args.annotations,
    )
    parts = []
    for name, value in variables.items():
        if isinstance(value, np.ndarray):
            parts.append(f"{name} {' x '.join(map(str, value.shape))}")
        elif isinstance(value, list):
            frames = sum(len(v) for v in value if isinstance(v, list))
            parts.append(f"{name} {len(value)} x 1" + (f" ({frames} frames)" if frames else ""))
        else:
            parts.append(name)
    for ids in ("class_ids", "train_labels"):
        if ids in variables:
            parts.append(f"{len(np.unique(variables[ids]))} classes")
    print(f"wrote {args.out} ({'v7.3' if args.v73 else 'v5'}): " + ", ".join(parts))
    return 0
