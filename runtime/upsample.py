"""Bilinear upsampling of mask logits at a grid of sampled pixels, and the argmax over queries there, in numpy.

The values are bit-identical to a separable float32 bilinear resize (``align_corners=False``) computed in this order:
``wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11)``, one rounding per operation (no fused
multiply-add), however the work is split into bands or threads. (PyTorch's CPU kernel, built for FMA hardware, fuses
some of these operations, so its values can differ in the last bit; only near-ties can then change owner.)

Why it is laid out this way: the argmax over K queries is the post-processing's hot loop (K x rows x cols values,
tens of millions for a photo with ~80 kept queries). numpy's argmax over a leading axis first copies the whole block
into a transposed buffer; with the queries as the *last* axis (rows x cols x K) every step is a contiguous
vectorized pass and the argmax reads each pixel's K values in one run. The work goes in bands of output rows: a band
transposes and resamples horizontally only the few source rows its taps read (a ~2 MB block), then produces its
output rows a few at a time in a ~1 MB block (each run of rows sharing their two source rows is one broadcast
multiply, no gathered copies) and takes the argmax there, so the big intermediate never exists. Bands are
independent, so a few threads share them (numpy releases the GIL in these loops).

Measured on the real DETR-R50 outputs of the benchmark photos (K = 2..99 kept queries, 135k-273k sampled pixels),
one thread: 25-35 ms per photo for the argmax instead of 95-215 ms with the queries-first numpy version.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SOURCE_ELEMENTS = 1 << 19  # float32 values of the horizontally resampled source rows one band holds (2 MB)
OUTPUT_ELEMENTS = 1 << 17  # float32 values of output rows resampled at once (two such buffers: 1 MB)
MIN_ELEMENTS_PER_THREAD = 1 << 20  # below this, starting threads costs more than it saves
MAX_THREADS = 4
GATHER_COST = 12  # measured on R50 outputs: one gathered value (argmax_at) costs about this many banded ones


def default_threads() -> int:
    """The CPUs this process may run on, at most MAX_THREADS."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, available))


@lru_cache(maxsize=256)
def bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of 1-D bilinear resampling n_in -> n_out, as F.interpolate(align_corners=False)."""
    if n_in == n_out:
        idx = np.arange(n_out)
        return idx, idx, np.ones(n_out, np.float32), np.zeros(n_out, np.float32)
    scale = np.float32(n_in) / np.float32(n_out)
    src = scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    w1 = np.clip(src - i0.astype(np.float32), np.float32(0.0), np.float32(1.0)).astype(np.float32)
    return i0, i1, np.float32(1.0) - w1, w1


@dataclass(frozen=True)
class _Band:
    """Output rows [start, stop) and the source rows [first, first + span) their bilinear taps read; ``steps``: the
    output rows in pieces of at most OUTPUT_ELEMENTS values, each a list of (y0, y1, row_start, row_stop): rows
    sharing both source rows."""

    start: int
    stop: int
    first: int
    span: int
    steps: list[list[tuple[int, int, int, int]]]


def _bands(y0: np.ndarray, y1: np.ndarray, row_elements: int, source_elements: int, output_elements: int
           ) -> list[_Band]:
    """Split the sampled rows into bands (see _Band); ``row_elements``: values in one row (cols x K)."""
    cut = np.flatnonzero((y0[1:] != y0[:-1]) | (y1[1:] != y1[:-1])) + 1
    bounds = [0, *cut.tolist(), y0.size]
    max_span = max(2, source_elements // row_elements)
    step_rows = max(1, output_elements // row_elements)
    bands: list[_Band] = []
    runs: list[tuple[int, int, int, int]] = []
    for a, e in zip(bounds[:-1], bounds[1:], strict=True):
        run = (int(y0[a]), int(y1[a]), a, e)
        if runs and run[1] - runs[0][0] + 1 > max_span:
            bands.append(_close_band(runs, step_rows))
            runs = []
        runs.append(run)
    bands.append(_close_band(runs, step_rows))
    return bands


def _close_band(runs: list[tuple[int, int, int, int]], step_rows: int) -> _Band:
    start, stop = runs[0][2], runs[-1][3]
    first = runs[0][0]
    steps: list[list[tuple[int, int, int, int]]] = []
    for s in range(start, stop, step_rows):
        e = min(stop, s + step_rows)
        steps.append([(r0, r1, max(a, s), min(b, e)) for r0, r1, a, b in runs if a < e and b > s])
    return _Band(start, stop, first, runs[-1][1] - first + 1, steps)


class SampledBilinear:
    """K mask logits (K x h x w) bilinearly upsampled to ``processed_size``, evaluated only at the pixels
    ``rows x cols`` (sorted processed-image indices) that the caller needs."""

    def __init__(self, masks: np.ndarray, processed_size: tuple[int, int], rows: np.ndarray, cols: np.ndarray,
                 source_elements: int | None = None, output_elements: int | None = None):
        masks = np.asarray(masks, dtype=np.float32)
        self.n_queries, h_in, w_in = masks.shape
        if self.n_queries == 0:
            raise ValueError("no queries to take the argmax over")
        if np.any(np.diff(rows) < 0) or np.any(np.diff(cols) < 0):
            raise ValueError("the sampled rows and columns must be sorted")
        y0, y1, wy0, wy1 = bilinear_taps(h_in, int(processed_size[0]))
        x0, x1, wx0, wx1 = bilinear_taps(w_in, int(processed_size[1]))
        self._y0, self._y1, self._wy0, self._wy1 = y0[rows], y1[rows], wy0[rows], wy1[rows]
        self._x0, self._x1, self._wx0, self._wx1 = x0[cols], x1[cols], wx0[cols], wx1[cols]
        self.shape = (int(np.size(rows)), int(np.size(cols)))
        self._masks = masks
        self._sizes = (source_elements or SOURCE_ELEMENTS, output_elements or OUTPUT_ELEMENTS)

    def argmax(self, threads: int | None = None) -> np.ndarray:
        """rows x cols index of the query with the highest value at every sampled pixel (the first one on ties)."""
        n_rows, n_cols = self.shape
        owner = np.empty((n_rows, n_cols), dtype=np.intp)
        if owner.size == 0:
            return owner
        bands = _bands(self._y0, self._y1, n_cols * self.n_queries, *self._sizes)
        if threads is None:
            threads = default_threads()
        threads = max(1, min(threads, len(bands), n_rows * n_cols * self.n_queries // MIN_ELEMENTS_PER_THREAD))
        if threads == 1:
            self._argmax_bands(bands, owner)
        else:
            with ThreadPoolExecutor(threads) as pool:
                # Interleaved bands: neighbouring bands cost about the same, so the threads finish together.
                list(pool.map(self._argmax_bands, [bands[i::threads] for i in range(threads)], [owner] * threads))
        return owner

    def _argmax_bands(self, bands: list[_Band], owner: np.ndarray) -> None:
        """Fill ``owner`` for the rows of ``bands`` (one thread's share)."""
        for start, stop, block in self._blocks(bands):
            block.argmax(axis=-1, out=owner[start:stop])

    def values(self) -> np.ndarray:
        """All rows x cols x K values at once (for checking the arithmetic; :meth:`argmax` never holds them all)."""
        out = np.empty((*self.shape, self.n_queries), np.float32)
        if out.size:
            for start, stop, block in self._blocks(_bands(self._y0, self._y1, self.shape[1] * self.n_queries,
                                                          *self._sizes)):
                out[start:stop] = block
        return out

    def _blocks(self, bands: list[_Band]) -> Iterator[tuple[int, int, np.ndarray]]:
        """(start, stop, values of output rows [start, stop): rows x cols x K) for ``bands``, a few rows at a time;
        each block is overwritten by the next."""
        k, n_cols = self.n_queries, self.shape[1]
        wx0 = np.repeat(self._wx0[:, None], k, axis=1)  # cols x K: the multiply runs over one contiguous block
        wx1 = np.repeat(self._wx1[:, None], k, axis=1)
        span = max(band.span for band in bands)
        step = max(runs[-1][3] - runs[0][2] for band in bands for runs in band.steps)
        source = np.empty((span, self._masks.shape[2], k), np.float32)
        horizontal = np.empty((span, n_cols, k), np.float32)
        scratch = np.empty_like(horizontal)
        top = np.empty((step, n_cols, k), np.float32)
        bottom = np.empty_like(top)
        for band in bands:
            first = band.first
            src, hz, tmp = source[:band.span], horizontal[:band.span], scratch[:band.span]
            np.copyto(src, self._masks[:, first:first + band.span].transpose(1, 2, 0))  # queries last
            # mode="clip": the indices are in range; the default "raise" mode copies ``out`` first (numpy's docs).
            np.take(src, self._x0, axis=1, out=hz, mode="clip")
            np.multiply(hz, wx0, out=hz)
            np.take(src, self._x1, axis=1, out=tmp, mode="clip")
            np.multiply(tmp, wx1, out=tmp)
            np.add(hz, tmp, out=hz)
            for runs in band.steps:
                start, stop = runs[0][2], runs[-1][3]
                t, b = top[:stop - start], bottom[:stop - start]
                # Output rows sharing their source rows are one broadcast multiply each: no gathered row copies.
                for r0, r1, a, e in runs:
                    np.multiply(hz[r0 - first], self._wy0[a:e, None, None], out=t[a - start:e - start])
                    np.multiply(hz[r1 - first], self._wy1[a:e, None, None], out=b[a - start:e - start])
                np.add(t, b, out=t)
                yield start, stop, t

    def argmax_at(self, r: np.ndarray, c: np.ndarray, queries: np.ndarray, chunk: int = 1 << 16,
                  threads: int | None = None, whole_rows: bool | None = None) -> np.ndarray:
        """Position in ``queries`` of the highest value at each sampled pixel (r[i], c[i]); same arithmetic as
        :meth:`argmax`, for re-deciding the pixels whose owner was dropped.

        Two ways, same result: gathering each pixel's values (cheap for a few scattered pixels), or the banded
        :meth:`argmax` over just ``queries`` on the rows holding such pixels (a gathered value costs about
        GATHER_COST banded ones, so this wins when many pixels are lost, e.g. after detr's stuff de-duplication).
        ``whole_rows`` forces one (None: the cheaper by that estimate).
        """
        queries = np.asarray(queries, dtype=np.intp)
        r, c = np.asarray(r, dtype=np.intp), np.asarray(c, dtype=np.intp)
        if r.size and queries.size:
            used_rows = np.unique(r)
            if whole_rows is None:
                whole_rows = used_rows.size * self.shape[1] < GATHER_COST * r.size
            if whole_rows:
                owner = self._restricted(queries, used_rows).argmax(threads)
                return owner[np.searchsorted(used_rows, r), c]
        best = np.empty(np.size(r), dtype=np.intp)
        step = max(1, chunk // max(1, queries.size))
        for s in range(0, best.size, step):
            rr, cc = r[s:s + step, None], c[s:s + step, None]
            best[s:s + step] = self._values(rr, cc, queries[None, :]).argmax(axis=1)
        return best

    def _restricted(self, queries: np.ndarray, rows: np.ndarray) -> SampledBilinear:
        """The same upsampling for only ``queries`` (indices into the masks) at only the sampled rows ``rows``
        (sorted positions in this grid's rows); every value it computes equals this one's."""
        sub = copy.copy(self)
        sub._masks = self._masks[queries]
        sub.n_queries = int(queries.size)
        sub._y0, sub._y1, sub._wy0, sub._wy1 = (a[rows] for a in (self._y0, self._y1, self._wy0, self._wy1))
        sub.shape = (int(rows.size), self.shape[1])
        return sub

    def _values(self, r: np.ndarray, c: np.ndarray, q: np.ndarray) -> np.ndarray:
        m = self._masks
        x0, x1, wx0, wx1 = self._x0[c], self._x1[c], self._wx0[c], self._wx1[c]
        top = m[q, self._y0[r], x0] * wx0 + m[q, self._y0[r], x1] * wx1
        bottom = m[q, self._y1[r], x0] * wx0 + m[q, self._y1[r], x1] * wx1
        return top * self._wy0[r] + bottom * self._wy1[r]
