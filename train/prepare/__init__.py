"""Data preparation: the COCO detection -> panoptic converter and the built-in synthetic dataset."""
