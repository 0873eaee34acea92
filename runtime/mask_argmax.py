"""Which query owns each pixel of bilinearly upsampled mask logits, exactly, without upsampling every query.

The panoptic merge needs, at each sampled pixel of the processed image, the query whose upsampled mask logit is the
highest (ties to the lowest query). Upsampling all K masks to full size costs K x H x W multiply-adds and dominates
post-processing. But a bilinear value is a convex combination of the four mask logits around it (one mask "cell"),
so per cell every query's value lies between the min and the max of its four corners. Where one query's minimum
beats every other query's maximum (most cells: masks are smooth blobs), that query owns the whole cell and nothing is
upsampled. Only pixels of the remaining cells (boundaries between blobs) are evaluated, and only for the queries
that could win there, with exactly the float32 arithmetic of the dense upsampling (horizontal pass first, then
vertical), so owners and tie-breaks are identical to an argmax over the dense upsampled logits.

The bounds allow for float32 rounding with a margin; masks with non-finite or huge values skip the bounds and are
evaluated densely (same arithmetic, same argmax, NaN included).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

# Rounding margin, relative to the largest |logit|: the computed value of a bilinear tap is within a few float32
# ulps (2**-24) of the convex combination; 2**-16 is far more than enough and decides practically the same cells.
_MARGIN = 2.0**-16
_MAX_BOUNDED = 1e30  # beyond this |logit| the products could overflow: evaluate densely instead
_CHUNK_ELEMENTS = 1 << 21  # bound the queries x pixels working arrays of exact evaluation (8 MB of float32)


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


def _pair_reduce(ufunc: np.ufunc, a: np.ndarray, axis: int) -> np.ndarray:
    """``ufunc(a[i], a[i + 1])`` along ``axis``, the last index paired with itself (the clamped bilinear edge)."""
    out = np.empty_like(a)
    n = a.shape[axis]
    head, tail, last = [slice(None)] * a.ndim, [slice(None)] * a.ndim, [slice(None)] * a.ndim
    head[axis], tail[axis], last[axis] = slice(0, n - 1), slice(1, n), slice(n - 1, n)
    ufunc(a[tuple(head)], a[tuple(tail)], out=out[tuple(head)])
    out[tuple(last)] = a[tuple(last)]
    return out


class UpsampledArgmax:
    """Owners of the sampled pixels of K mask logit maps bilinearly upsampled to ``processed_size``.

    ``rows``/``cols`` are the processed-image rows and columns of the sampled grid; pixels are addressed by their
    index in that grid.
    """

    def __init__(self, masks: np.ndarray, processed_size: tuple[int, int], rows: np.ndarray, cols: np.ndarray):
        self._masks = np.ascontiguousarray(masks, dtype=np.float32)
        n, h_in, w_in = self._masks.shape
        y0, y1, wy0, wy1 = bilinear_taps(h_in, int(processed_size[0]))
        x0, x1, wx0, wx1 = bilinear_taps(w_in, int(processed_size[1]))
        self._y0, self._y1, self._wy0, self._wy1 = y0[rows], y1[rows], wy0[rows], wy1[rows]
        self._x0, self._x1, self._wx0, self._wx1 = x0[cols], x1[cols], wx0[cols], wx1[cols]
        self.shape = (rows.size, cols.size)
        self._w_in = w_in
        biggest = float(np.abs(self._masks).max()) if self._masks.size else 0.0
        self._bounded = bool(np.isfinite(biggest)) and biggest < _MAX_BOUNDED
        if self._bounded:
            # Per query and cell (i, j) = corners {i, i+1} x {j, j+1}: the least and greatest corner, flattened.
            self._low = _pair_reduce(np.minimum, _pair_reduce(np.minimum, self._masks, 1), 2).reshape(n, -1)
            self._high = _pair_reduce(np.maximum, _pair_reduce(np.maximum, self._masks, 1), 2).reshape(n, -1)
            self._margin = np.float32(2.0 * _MARGIN * max(biggest, 1.0))

    def values(self, queries: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Upsampled logits of ``queries`` at sampled pixels (r, c) (broadcast together), in float32.

        Same operations in the same order as a dense separable upsampling (horizontal, then vertical), so the values
        are bit-identical to it.
        """
        m = self._masks
        y0, y1, wy0, wy1 = self._y0[r], self._y1[r], self._wy0[r], self._wy1[r]
        x0, x1, wx0, wx1 = self._x0[c], self._x1[c], self._wx0[c], self._wx1[c]
        top = m[queries, y0, x0] * wx0 + m[queries, y0, x1] * wx1
        bottom = m[queries, y1, x0] * wx0 + m[queries, y1, x1] * wx1
        return top * wy0 + bottom * wy1

    def owners(self, queries: np.ndarray, r: np.ndarray | None = None, c: np.ndarray | None = None) -> np.ndarray:
        """The query of ``queries`` (ascending) with the highest upsampled logit at each pixel, ties to the first.

        Pixels (r, c): 1-D index arrays -> 1-D result; None -> every pixel of the grid, as a 2-D array.
        """
        queries = np.asarray(queries, dtype=np.int64)
        if r is None or c is None:
            if not self._bounded:
                grid_r, grid_c = np.indices(self.shape).reshape(2, -1)
                return self._exact(queries, grid_r, grid_c).reshape(self.shape)
            contenders, cell_owner = self._cells(queries, None)
            owner = cell_owner.reshape(-1, self._w_in)[np.ix_(self._y0, self._x0)]
            r, c = np.nonzero(owner < 0)
            if r.size:
                owner[r, c] = self._resolve(queries, r, c, contenders, self._y0[r] * self._w_in + self._x0[c])
            return owner
        if not self._bounded:
            return self._exact(queries, r, c)
        cells, cell_of = np.unique(self._y0[r] * self._w_in + self._x0[c], return_inverse=True)
        contenders, cell_owner = self._cells(queries, cells)
        owner = cell_owner[cell_of]
        open_ = np.flatnonzero(owner < 0)
        if open_.size:
            owner[open_] = self._resolve(queries, r[open_], c[open_], contenders, cell_of[open_])
        return owner

    def _cells(self, queries: np.ndarray, cells: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Per cell (all, or ``cells``): which queries could own one of its pixels (K' x cells), and the owner of
        the whole cell when only one could (-1 elsewhere).

        A query could own a pixel if its greatest corner reaches the best least corner (less the rounding margin).
        """
        every = queries.size == self._low.shape[0]  # queries are ascending and unique: all of them
        low = self._low if every else self._low[queries]
        high = self._high if every else self._high[queries]
        if cells is not None:
            low, high = low[:, cells], high[:, cells]
        floor = low.max(0)
        floor -= self._margin
        contenders = high >= floor
        n_contenders = contenders.sum(0, dtype=np.int32)
        sole = contenders.argmax(0)
        return contenders, np.where(n_contenders == 1, queries[sole], -1)

    def _resolve(self, queries: np.ndarray, r: np.ndarray, c: np.ndarray, contenders: np.ndarray,
                 cell: np.ndarray) -> np.ndarray:
        """Exact argmax at pixels (r, c) of the given cells (columns of ``contenders``) over the cell's contenders."""
        # The contenders of the cells involved, as (cell, query) pairs grouped by cell.
        cells, cell_of = np.unique(cell, return_inverse=True)
        pair_cell, pair_k = np.nonzero(np.ascontiguousarray(contenders[:, cells].T))
        per_cell = np.bincount(pair_cell, minlength=cells.size)
        first_pair = np.cumsum(per_cell) - per_cell
        # Expanded to (pixel, query) pairs, in chunks of whole pixels to bound memory.
        n_pairs = per_cell[cell_of]
        pairs_before = np.cumsum(n_pairs) - n_pairs
        owner = np.empty(r.size, dtype=np.int64)
        start = 0
        while start < r.size:
            stop = max(start + 1, int(np.searchsorted(pairs_before, pairs_before[start] + _CHUNK_ELEMENTS)))
            counts, offset = n_pairs[start:stop], pairs_before[start:stop] - pairs_before[start]
            pixel = np.repeat(np.arange(stop - start), counts)
            k = pair_k[np.repeat(first_pair[cell_of[start:stop]] - offset, counts) + np.arange(pixel.size)]
            value = self.values(queries[k], r[start:stop][pixel], c[start:stop][pixel])
            # Per pixel (pairs are ordered by pixel, then query): the first pair holding the pixel's maximum.
            best = np.maximum.reduceat(value, offset)
            hit = np.flatnonzero(value == best[pixel])
            first_hit = hit[np.r_[True, pixel[hit[1:]] != pixel[hit[:-1]]]]
            owner[start:stop] = queries[k[first_hit]]
            start = stop
        return owner

    def _exact(self, queries: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Dense argmax over all ``queries`` at every pixel (r, c), chunked; np.argmax semantics (NaN wins)."""
        owner = np.empty(r.size, dtype=np.int64)
        step = max(1, _CHUNK_ELEMENTS // max(1, queries.size))
        for start in range(0, r.size, step):
            stop = min(r.size, start + step)
            value = self.values(queries[:, None], r[None, start:stop], c[None, start:stop])
            owner[start:stop] = queries[value.argmax(0)]
        return owner
