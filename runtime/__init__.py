"""panseg's lean runtime: everything that runs in production, without torch.

Preprocessing, engine backends, mask upsampling, the panoptic merge, COCO panoptic output and PQ evaluation.
Nothing here may import torch (a test enforces it).
"""

__version__ = "0.1.0"
