"""``distmeta data``: prepare Parquet stores, summarise them, write one-shot runs.

Contract: ``register(subparsers)`` adds ``data prepare omniglot|miniimagenet``,
``data info`` and ``data runs``; each handler returns an exit code and raises
``DataError`` (one line) on bad input.
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Dict

from distmeta.errors import DataError


def _print_info(info: Dict[str, Any]) -> None:
    print(f"store        {info['path']}")
    print(f"rows         {info['rows']}")
    print(f"classes      {info['classes']}")
    print(f"alphabets    {len(info['alphabets'])}: {', '.join(info['alphabets'])}")
    print(f"source sets  {', '.join(f'{k} ({v} rows)' for k, v in info['source_sets'].items())}")
    splits = ", ".join(f"{k}: {v['classes']} classes / {v['rows']} rows" for k, v in info["splits"].items())
    print(f"splits       {splits or '(none stored)'}")
    print(f"image shape  {', '.join('x'.join(map(str, s)) for s in info['image_shapes'])} (HxWxC, uint8)")
    print(f"bytes        {info['bytes']}")
    if info["metadata"]:
        print(f"metadata     {json.dumps(info['metadata'])}")


def _prepare_omniglot(args: argparse.Namespace) -> int:
    from distmeta.schema import DataConfig
    from distmeta.data.omniglot import SETS, resolve_root
    from distmeta.data.store import prepare_omniglot

    sets = args.sets
    if not sets and not args.preset:
        root = resolve_root(args.data_root)
        sets = [name for name, stem in SETS.items() if (root / f"{stem}.zip").is_file()]
        if not sets:
            raise DataError(f"no Omniglot zips in {root}; pass --sets or --preset to download them, "
                            f"or --data-root DIR")
    cfg = DataConfig(dataset="omniglot", root=args.data_root, image_size=args.image_size, preset=args.preset,
                     download=not args.no_download, base_url=args.base_url, seed=args.seed)
    _print_info(prepare_omniglot(cfg, args.out, sets=sets, overwrite=args.overwrite))
    return 0


def _prepare_miniimagenet(args: argparse.Namespace) -> int:
    from distmeta.data.store import prepare_miniimagenet

    _print_info(prepare_miniimagenet(args.data_root, args.out, image_size=args.image_size, overwrite=args.overwrite))
    return 0


def _info(args: argparse.Namespace) -> int:
    from distmeta.data.store import store_info

    info = store_info(args.path)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_info(info)
    return 0


def _runs(args: argparse.Namespace) -> int:
    from distmeta.data.omniglot import ensure_zip
    from distmeta.data.oneshot_runs import generate_runs

    path = ensure_zip(args.set, args.data_root, download=not args.no_download)
    runs = generate_runs(path, args.out, args.alphabets, n_runs=args.runs, seed=args.seed)
    print(f"wrote {len(runs)} runs to {args.out}")
    return 0


def register(subparsers) -> None:
    data = subparsers.add_parser(
        "data", help="prepare and inspect datasets",
        description="Convert datasets to Parquet stores (local path or s3://, gs://, file:// URI), "
                    "summarise a store, or write one-shot classification runs.")
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])
    actions = data.add_subparsers(dest="data_command", metavar="ACTION")

    prepare = actions.add_parser(
        "prepare", help="write a dataset as a Parquet store",
        description="Read a dataset from its official files and write it as a Parquet store "
                    "(one row per preprocessed image) that `data.dataset: parquet` reads.")
    prepare.set_defaults(func=lambda args: (prepare.print_help(), 2)[1])
    kinds = prepare.add_subparsers(dest="dataset", metavar="DATASET")
    _register_prepare_omniglot(kinds)
    _register_prepare_miniimagenet(kinds)
    _register_info_and_runs(actions)


def _register_prepare_omniglot(kinds) -> None:
    om = kinds.add_parser(
        "omniglot", help="Omniglot from the official zips",
        description="Write Omniglot sets from the official zips (downloaded when missing) as a store. "
                    "Without --sets: the sets of --preset, else every zip found in the data root. "
                    "With --preset the split column holds that preset's train/val/test.")
    om.add_argument("--out", required=True, help="output folder, .parquet file or URI (s3://, gs://, file://)")
    om.add_argument("--data-root", help="folder holding images_*.zip (default $DISTMETA_DATA_DIR or "
                                        "~/.cache/distmeta/omniglot)")
    om.add_argument("--sets", nargs="+", metavar="SET",
                    choices=["background", "evaluation", "background_small1", "background_small2"],
                    help="source sets to include")
    om.add_argument("--image-size", type=int, default=28, help="image side in pixels (default 28)")
    om.add_argument("--preset", choices=["maml", "official", "minimal"], help="store this preset's splits")
    om.add_argument("--seed", type=int, default=0, help="seed of the maml split (default 0)")
    om.add_argument("--base-url", help="download base URL (default $DISTMETA_OMNIGLOT_URL or the official repo)")
    om.add_argument("--no-download", action="store_true", help="fail instead of downloading missing zips")
    om.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    om.set_defaults(func=_prepare_omniglot)


def _register_prepare_miniimagenet(kinds) -> None:
    mi = kinds.add_parser(
        "miniimagenet", help="mini-ImageNet from the Ravi-Larochelle CSV layout",
        description="Write mini-ImageNet (images/ plus train.csv, val.csv, test.csv) as a store; "
                    "the split column holds the CSV split.")
    mi.add_argument("--out", required=True, help="output folder, .parquet file or URI")
    mi.add_argument("--data-root", help="folder holding images/ and the CSVs "
                                        "(default $DISTMETA_MINIIMAGENET_DIR or ~/.cache/distmeta/miniimagenet)")
    mi.add_argument("--image-size", type=int, default=84, help="image side in pixels (default 84)")
    mi.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    mi.set_defaults(func=_prepare_miniimagenet)


def _register_info_and_runs(actions) -> None:
    info = actions.add_parser("info", help="summarise a Parquet store",
                              description="Print rows, classes, alphabets, splits, image shape and size of a store.")
    info.add_argument("path", help="store folder, .parquet file or URI")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(func=_info)

    runs = actions.add_parser(
        "runs", help="write Lake et al. one-shot runs from held-out alphabets",
        description="Write run01..runNN (training/, test/, class_labels.txt: the official 20-way "
                    "within-alphabet one-shot layout) from alphabets of an Omniglot zip.")
    runs.add_argument("--out", required=True, help="output folder")
    runs.add_argument("--alphabets", nargs="+", required=True, help="alphabets to draw runs from (>= 20 characters)")
    runs.add_argument("--set", default="background_small2", help="source set (default background_small2)")
    runs.add_argument("--data-root", help="folder holding images_*.zip")
    runs.add_argument("--runs", type=int, default=20, help="number of runs (default 20)")
    runs.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    runs.add_argument("--no-download", action="store_true", help="fail instead of downloading a missing zip")
    runs.set_defaults(func=_runs)
