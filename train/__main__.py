"""`python -m train`: detr's main.py for panseg (plain tensors, safe checkpoints, synthetic data by default)."""

import sys

from train.main import main

sys.exit(main())
