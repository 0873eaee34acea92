"""`panseg-rt sheet`: contact sheets of a `panseg-rt infer` output folder (image | segments | overlay per row)."""

from __future__ import annotations

import argparse

from runtime.contact_sheet import DEFAULT_CELL, DEFAULT_ROWS, write_contact_sheets
from runtime.subcommands import hw_type, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="the --output folder of panseg-rt infer")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="folder for the pages: OUT/sheet_001.png, sheet_002.png, ...")
    parser.add_argument("--rows", type=positive_int, default=DEFAULT_ROWS, metavar="N",
                        help=f"images per page (default {DEFAULT_ROWS})")
    width, height = DEFAULT_CELL
    parser.add_argument("--cell", type=hw_type(), default=(height, width), metavar="HxW",
                        help=f"box for each picture in pixels, height x width, aspect ratio kept "
                             f"(default {height}x{width})")


def run(args: argparse.Namespace) -> int:
    height, width = args.cell
    pages = write_contact_sheets(args.folder, args.output, args.rows, (width, height))
    print(f"wrote {len(pages)} page{'s' if len(pages) != 1 else ''}: {pages[0]}" +
          (f" ... {pages[-1].name}" if len(pages) > 1 else ""))
    return 0
