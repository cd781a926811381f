"""Binary images packed 64 pixels to a word: boundary maps, disk dilation and pixel counts.

The DAVIS boundary measure is whole-image boolean algebra: neighbour comparisons, a disk
dilation, intersections and counts. Packed, each step touches an eighth of the memory of a bool
image; laid out as one flat run of words, each step is one contiguous numpy operation, whatever
the rows: a pixel's right neighbour is the next bit (a shift with carry between words), the pixel
below is `stride` words on. Each row is followed by `margin` zero words, enough that moving pixels
by up to `radius` along the stream never carries one row's pixels into another row.

Layout of `n` rows (`PackedLayout`): `margin` zero words, then per row `data` words (pixel x in bit
x % 64 of word x // 64, the bits after the last pixel zero) and `margin` zero words. A run of rows
inside it, with the margin before its first row, is again such a layout.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import cv2
import numpy as np

WORD_BITS = 64
_SHIFTS = [np.uint64(bits) for bits in range(WORD_BITS + 1)]


class PackedLayout:
    """Rows of `width` pixels, with margins wide enough for a dilation by `radius`."""

    __slots__ = ("width", "radius", "data", "margin", "stride")

    def __init__(self, width: int, radius: int) -> None:
        self.width, self.radius = width, radius
        self.data = -(-width // WORD_BITS)  # words of pixels per row
        self.margin = max(1, -(-radius // WORD_BITS))  # zero words after each row
        self.stride = self.data + self.margin

    def size(self, n_rows: int) -> int:
        return self.margin + n_rows * self.stride

    def pack(self, mask: np.ndarray) -> np.ndarray:
        """A bool `[n, w]` image (w <= width + 1: one more pixel may spill into the margin)."""
        words = np.zeros(self.size(mask.shape[0]), np.uint64)
        packed = np.packbits(mask, axis=1, bitorder="little")
        self._as_byte_rows(words)[:, : packed.shape[1]] = packed
        return words

    def unpack(self, words: np.ndarray, n_rows: int) -> np.ndarray:
        return np.unpackbits(self._as_byte_rows(words)[:n_rows], axis=1, count=self.width, bitorder="little").view(bool)

    def _as_byte_rows(self, words: np.ndarray) -> np.ndarray:
        n_rows = (words.size - self.margin) // self.stride
        row_bytes = 8 * self.stride
        return words.view(np.uint8)[8 * self.margin : 8 * self.margin + n_rows * row_bytes].reshape(n_rows, row_bytes)

    def clear_outside(self, words: np.ndarray) -> None:
        """Zero every bit that is not a pixel (margins, and bits after a row's last pixel)."""
        rows = words[self.margin :].reshape(-1, self.stride)
        np.bitwise_and(rows, _pixel_bits(self.width, self.stride), out=rows)
        words[: self.margin] = 0


@functools.cache
def _pixel_bits(width: int, stride: int) -> np.ndarray:
    """One row's words with the bits of its `width` pixels set, the rest (margin) clear."""
    row = np.zeros(stride, np.uint64)
    full, rest = divmod(width, WORD_BITS)
    row[:full] = np.uint64(2**64 - 1)
    if rest:
        row[full] = np.uint64((1 << rest) - 1)
    return row


@functools.cache
def disk_kernel(radius: int) -> np.ndarray:
    """`skimage.morphology.disk(radius)` as a uint8 kernel: offsets with dx^2 + dy^2 <= radius^2.

    Built here rather than imported because importing skimage.morphology costs over a second;
    the tests check it equals skimage's disk.
    """
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius * radius).astype(np.uint8)


@functools.cache
def _disk_half_widths(radius: int) -> tuple[int, ...]:
    """Half-width of each row dy = 0..radius of the disk (it spans |dx| <= half-width)."""
    return tuple(int(row.sum()) // 2 for row in disk_kernel(radius)[radius:])


def count(words: np.ndarray) -> int:
    """Number of set bits (OpenCV's Hamming norm is a vectorised popcount)."""
    return int(cv2.norm(words.view(np.uint8), cv2.NORM_HAMMING))


def count_common(first: np.ndarray, second: np.ndarray) -> int:
    """Number of bits set in both: (|a| + |b| - |a xor b|) / 2, with no temporary."""
    return (count(first) + count(second) - int(cv2.norm(first.view(np.uint8), second.view(np.uint8), cv2.NORM_HAMMING))) // 2


def pack_rows(mask: np.ndarray) -> np.ndarray:
    """A C-contiguous bool `[..., 64 * n]` array as words `[..., n]` (one flat packbits call)."""
    words = np.packbits(mask.reshape(-1), bitorder="little").view(np.uint64)
    return words.reshape(*mask.shape[:-1], mask.shape[-1] // WORD_BITS)


def copy_column(words: np.ndarray, source: int, target: int) -> None:
    """Set pixel `target` of each row (`[..., stride]` words) to its pixel `source`, which is set
    where `target` is clear."""
    bits = np.bitwise_and(np.right_shift(words[..., source // WORD_BITS], _SHIFTS[source % WORD_BITS]), _SHIFTS[1])
    column = words[..., target // WORD_BITS]
    np.bitwise_or(column, np.left_shift(bits, _SHIFTS[target % WORD_BITS], out=bits), out=column)


def seg2bmap(mask: np.ndarray, width: int) -> np.ndarray:
    """Martin et al.'s boundary maps (`[n, h, stride]`) of packed masks `[n, h + 1, stride]`
    (C-contiguous; pixels 0..width of each row, the rest clear).

    A pixel differs from its right, bottom or bottom-right neighbour. Each mask carries one more
    row and one more pixel per row than its map: the real neighbours inside the frame, copies of
    the last row and column at its edge (which makes the last row compare only rightwards, the
    last column only downwards, as the official seg2bmap). With h = m ^ right (bitwise), the map
    is h[y] | (m[y] ^ m[y + 1]) | h[y + 1]: m ^ bottom-right = (m ^ bottom) ^ h[y + 1].
    """
    flat = mask.reshape(-1)
    # Bit x of `right` holds pixel x + 1: the word moved down a bit, the next word's first pixel on top.
    right = np.right_shift(flat, _SHIFTS[1])
    np.bitwise_or(right[:-1], np.left_shift(flat[1:], _SHIFTS[WORD_BITS - 1]), out=right[:-1])
    across = np.bitwise_xor(flat, right, out=right).reshape(mask.shape)
    boundary = np.bitwise_xor(mask[:, :-1], mask[:, 1:])
    np.bitwise_or(boundary, across[:, :-1], out=boundary)
    np.bitwise_or(boundary, across[:, 1:], out=boundary)
    np.bitwise_and(boundary, _pixel_bits(width, mask.shape[2]), out=boundary)
    return boundary


def _or_moved(out: np.ndarray, words: np.ndarray, offset: int, scratch: np.ndarray) -> None:
    """out |= `words` moved `offset` bits along the stream (< 0: towards x = 0)."""
    size = words.size
    whole, part = divmod(abs(offset), WORD_BITS)
    if whole >= size:
        return
    kept, carried = size - whole, size - whole - 1
    if offset >= 0:  # word k: word k - whole moved up `part` bits, the top bits of the word before
        np.left_shift(words[:kept], _SHIFTS[part], out=scratch[:kept])
        np.bitwise_or(out[whole:], scratch[:kept], out=out[whole:])
        if part and carried > 0:
            np.right_shift(words[:carried], _SHIFTS[WORD_BITS - part], out=scratch[:carried])
            np.bitwise_or(out[whole + 1 :], scratch[:carried], out=out[whole + 1 :])
    else:  # word k: word k + whole moved down `part` bits, the low bits of the word after
        np.right_shift(words[whole:], _SHIFTS[part], out=scratch[:kept])
        np.bitwise_or(out[:kept], scratch[:kept], out=out[:kept])
        if part and carried > 0:
            np.left_shift(words[whole + 1 :], _SHIFTS[WORD_BITS - part], out=scratch[:carried])
            np.bitwise_or(out[:carried], scratch[:carried], out=out[:carried])


def dilate_disk(words: np.ndarray, layout: PackedLayout) -> np.ndarray:
    """Packed `cv2.dilate(image, disk(layout.radius))`, with pixels outside the image unset.

    `words` must have its margins and the bits after each row's last pixel clear.
    """
    return _Dilations(words, layout).disk()


def count_in_reach(boundary: np.ndarray, other: np.ndarray, layout: PackedLayout) -> int:
    """|boundary ∩ dilate(other, disk(radius))|: pixels of `boundary` with one of `other` in reach."""
    return _counts_in_reach(boundary, other, layout, [slice(None)])[0]


def matched_in_reach(pairs: Sequence[tuple[np.ndarray, np.ndarray]], radius: int) -> list[tuple[int, int]]:
    """`count_in_reach` both ways for each pair of same-shaped windows (2-D word arrays: rows of
    some layout, whole words of them), the pairs of each width dilated together.

    Windows of one width are stacked into one image, `radius` empty rows apart so that no
    dilation reaches from one into the next: every numpy call then serves all of them (for the
    many small windows of a sequence, the calls were the cost, not the pixels).
    """
    results: list[tuple[int, int]] = [(0, 0)] * len(pairs)
    by_width: dict[int, list[int]] = {}
    for index, (first, _) in enumerate(pairs):
        by_width.setdefault(first.shape[1], []).append(index)
    for n_words, indices in by_width.items():
        layout = PackedLayout(WORD_BITS * n_words, radius)
        starts = np.cumsum([0] + [pairs[index][0].shape[0] + radius for index in indices])
        segments = [slice(start * layout.stride, layout.margin + (start + pairs[index][0].shape[0]) * layout.stride)
                    for start, index in zip(starts, indices)]  # fmt: skip
        stacks = []
        for side in (0, 1):
            stack = np.zeros(layout.size(int(starts[-1])), np.uint64)
            rows = stack[layout.margin :].reshape(-1, layout.stride)
            for start, index in zip(starts, indices):
                window = pairs[index][side]
                rows[start : start + window.shape[0], :n_words] = window
            stacks.append(stack)
        firsts = _counts_in_reach(stacks[0], stacks[1], layout, segments)
        seconds = _counts_in_reach(stacks[1], stacks[0], layout, segments)
        for index, first, second in zip(indices, firsts, seconds):
            results[index] = first, second
    return results


def _counts_in_reach(boundary: np.ndarray, other: np.ndarray, layout: PackedLayout, segments: list[slice]) -> list[int]:
    """`count_in_reach` on each segment of two images (segments: runs of whole rows with the
    margin before them). First with the square inscribed in the disk (|dx|, |dy| <=
    isqrt(r^2 / 2)), which takes half the work and is the disk's first half: where it reaches
    every pixel, so does the disk."""
    dilations = _Dilations(other, layout)
    square = dilations.square(math.isqrt(layout.radius**2 // 2))
    totals = [count(boundary[segment]) for segment in segments]
    counts = [count_common(boundary[segment], square[segment]) for segment in segments]
    if counts != totals:
        disk = dilations.disk()
        counts = [matched if matched == total else count_common(boundary[segment], disk[segment])
                  for segment, matched, total in zip(segments, counts, totals)]  # fmt: skip
    return counts


class _Dilations:
    """Dilations of one packed image, sharing their dilations along the rows.

    The disk is a stack of rows: row dy spans |dx| <= isqrt(r^2 - dy^2) (`_disk_half_widths`).
    Each row half-width is a dilation along the rows (shifts of the stream; the margins keep rows
    apart), and the disk is their union moved up and down by dy rows (`stride` words each).
    """

    def __init__(self, words: np.ndarray, layout: PackedLayout) -> None:
        self.layout = layout
        self.along_rows = {0: words}
        self.scratch = np.empty_like(words)

    def row_dilation(self, half_width: int) -> np.ndarray:
        """Along the rows by |dx| <= half_width: a narrower one a, or'ed with itself moved by
        -d and +d (d = half_width - a), is exact while d <= 2a + 1 (the three pieces overlap)."""
        while half_width not in self.along_rows:
            base = max(width for width in self.along_rows if width < half_width)
            width = min(half_width, 3 * base + 1)
            source = self.along_rows[base]
            dilated = source.copy()
            _or_moved(dilated, source, width - base, self.scratch)
            _or_moved(dilated, source, base - width, self.scratch)
            self.along_rows[width] = dilated
        return self.along_rows[half_width]

    def square(self, half: int) -> np.ndarray:
        """By |dx|, |dy| <= half: the row dilation moved up and down, doubling the reach."""
        out, reach = self.row_dilation(half), 0
        while reach < half:
            step = min(2 * reach + 1, half - reach)
            source, out = out, out.copy()
            self._or_rows_moved(out, source, step)
            reach += step
        return out

    def disk(self) -> np.ndarray:
        half_widths = _disk_half_widths(self.layout.radius)
        out = self.row_dilation(half_widths[0]).copy()
        for dy, half_width in enumerate(half_widths[1:], start=1):
            self._or_rows_moved(out, self.row_dilation(half_width), dy)
        return out

    def _or_rows_moved(self, out: np.ndarray, source: np.ndarray, rows: int) -> None:
        """out |= source moved up and down by `rows` rows."""
        offset = rows * self.layout.stride
        if offset < source.size:
            np.bitwise_or(out[offset:], source[: source.size - offset], out=out[offset:])
            np.bitwise_or(out[: source.size - offset], source[offset:], out=out[: source.size - offset])
