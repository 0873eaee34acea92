"""`panseg-rt validate`: check a COCO panoptic dataset (JSON + PNG folder) against the format."""

from __future__ import annotations

import argparse

from runtime.categories import load_categories
from runtime.panoptic_format import validate_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", required=True, help="COCO panoptic JSON")
    parser.add_argument("--folder", required=True, help="folder of panoptic PNGs")
    parser.add_argument("--categories", help="categories JSON (default: the JSON's own 'categories')")
    parser.add_argument("--check-area", action="store_true", help="also require JSON areas to equal pixel counts")


def run(args: argparse.Namespace) -> int:
    categories = load_categories(args.categories) if args.categories else None
    n = validate_dataset(args.json, args.folder, categories, check_area=args.check_area)
    print(f"{args.json}: {n} annotations valid")
    return 0
