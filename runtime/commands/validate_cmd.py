"""`panseg-rt validate`: check a COCO panoptic dataset (JSON + PNG folder) against the format."""

from __future__ import annotations

import argparse

from runtime.categories import load_categories
from runtime.panoptic_format import validate_dataset
from runtime.subcommands import add_deprecated


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "%(prog)s PANOPTIC_JSON FOLDER [options]"
    parser.add_argument("panoptic_json", nargs="?", metavar="PANOPTIC_JSON", help="COCO panoptic JSON")
    parser.add_argument("folder", nargs="?", metavar="FOLDER", help="folder of panoptic PNGs")
    add_deprecated(parser, "--json", "PANOPTIC_JSON (the first argument)", dest="legacy_json")
    add_deprecated(parser, "--folder", "FOLDER (the second argument)", dest="legacy_folder")
    parser.add_argument("--categories", help="categories JSON (default: the JSON's own 'categories')")
    parser.add_argument("--check-area", action="store_true", help="also require JSON areas to equal pixel counts")


def finish_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Fold the deprecated ``--json F --folder D`` into the positional ``PANOPTIC_JSON FOLDER``."""
    positional = [p for p in (args.panoptic_json, args.folder) if p is not None]
    if args.legacy_json is not None:
        positional.insert(0, args.legacy_json)
    if args.legacy_folder is not None:
        positional.append(args.legacy_folder)
    if len(positional) != 2:
        parser.error("expected the dataset as PANOPTIC_JSON FOLDER")
    args.panoptic_json, args.folder = positional


def run(args: argparse.Namespace) -> int:
    categories = load_categories(args.categories) if args.categories else None
    n = validate_dataset(args.panoptic_json, args.folder, categories, check_area=args.check_area)
    print(f"{args.panoptic_json}: {n} annotations valid")
    return 0
