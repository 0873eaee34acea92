"""`python -m train.prepare {detection2panoptic,synthetic} ...`"""

import sys

from runtime.subcommands import run_subcommand

SUBCOMMANDS = {
    "detection2panoptic": ("train.prepare.detection2panoptic", "convert a COCO detection dataset to COCO panoptic"),
    "synthetic": ("train.prepare.synthetic", "generate the built-in synthetic panoptic dataset"),
}

if __name__ == "__main__":
    sys.exit(run_subcommand("python -m train.prepare", "Data preparation for panseg.", SUBCOMMANDS))
