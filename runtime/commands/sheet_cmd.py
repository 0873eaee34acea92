"""`panseg-rt sheet`: contact sheets of a `panseg-rt infer` output folder (image | segments | overlay per row)."""

from __future__ import annotations

import argparse
import re

from runtime.contact_sheet import DEFAULT_CELL, DEFAULT_ROWS, write_contact_sheets
from runtime.errors import PansegError
from runtime.subcommands import positive_int

_CELL = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="the --output folder of panseg-rt infer")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="folder for the pages: OUT/sheet_001.png, sheet_002.png, ...")
    parser.add_argument("--rows", type=positive_int, default=DEFAULT_ROWS, metavar="N",
                        help=f"images per page (default {DEFAULT_ROWS})")
    parser.add_argument("--cell", default="{}x{}".format(*DEFAULT_CELL), metavar="WxH",
                        help="box for each picture in pixels, aspect ratio kept (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    match = _CELL.match(args.cell)
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise PansegError(f"--cell {args.cell!r}: expected WIDTHxHEIGHT in pixels, e.g. 480x360")
    pages = write_contact_sheets(args.folder, args.output, args.rows, (int(match[1]), int(match[2])))
    print(f"wrote {len(pages)} page{'s' if len(pages) != 1 else ''}: {pages[0]}" +
          (f" ... {pages[-1].name}" if len(pages) > 1 else ""))
    return 0
