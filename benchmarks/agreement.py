"""How far a backend's panoptic output is from eager's, so that speed never hides a wrong answer.

Three numbers over the benchmark's images, eager's output taken as the ground truth:

- pixel agreement: share of pixels whose segment corresponds to eager's segment there (segments matched by largest
  overlap; ids may differ), from export.onnx.verify.compare_panoptic, weighted by pixel count;
- same segments: share of images whose segments match eager's one-to-one with the same categories;
- PQ against eager (runtime.pq in memory, panopticapi's definition); 1.0 when neither output has any segment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from export.onnx.verify import compare_panoptic
from runtime.categories import Category
from runtime.postprocess import PanopticResult
from runtime.pq import PQStat, pq_image_stats


def agreement(reference: Sequence[PanopticResult], other: Sequence[PanopticResult],
              categories: Mapping[int, Category]) -> dict[str, Any]:
    """Agreement of ``other`` with ``reference`` (same images, same order); every value in [0, 1]."""
    if len(reference) != len(other):
        raise ValueError(f"{len(reference)} reference results but {len(other)} to compare")
    pixels = agreeing = same = 0
    stat = PQStat()
    for k, (ref, got) in enumerate(zip(reference, other, strict=True)):
        share, identical = compare_panoptic(got, ref)
        pixels += ref.id_map.size
        agreeing += share * ref.id_map.size
        same += int(identical)
        stat += pq_image_stats(ref.id_map, ref.segments_info, got.id_map, got.segments_info, categories,
                               where=f"image {k}")
    summary = stat.average(categories)
    return {
        "pixel_agreement": agreeing / pixels if pixels else 1.0,
        "same_segments": same / len(reference) if reference else 1.0,
        "pq": summary["pq"] if summary["n"] else 1.0,
        "images": len(reference),
        "segments_reference": sum(len(r.segments_info) for r in reference),
        "segments_backend": sum(len(r.segments_info) for r in other),
    }
