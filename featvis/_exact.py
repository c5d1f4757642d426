"""Exact sums of float64 values, whatever the order they are added in (for the survey's means).

A float64 sum depends on the order of its terms: ``(a + b) + c`` and ``a + (b + c)`` can differ
in the last bit, so a survey that summed in float64 would give a mean that depends on the batch
size, the order images arrive in and how the work was split between workers. :class:`ExactSum`
keeps each sum as an integer in base 2**32 limbs instead (a "superaccumulator"): adding is
integer addition, which is associative, and the result is rounded to float64 once, at the end,
correctly. Each value ``x = M * 2**e`` (an integer mantissa ``M < 2**53``) is written as three
32-bit pieces added to three consecutive limbs.

Values below the quantum ``2**quantum`` are truncated (toward zero) before they are added, the
same way whenever they are added, so the sum is still independent of order; the default quantum
is float64's smallest subnormal, where nothing is ever truncated.
"""

from __future__ import annotations

import numpy as np

from featvis._errors import ArgumentError

__all__ = ["ExactSum"]

_BITS = 32
_MASK = (1 << _BITS) - 1
#: Carries are propagated before a limb could have received this many pieces (each < 2**32),
#: so an int64 limb never overflows.
_ADDS_BEFORE_CARRY = 1 << 30
_SMALLEST = -1074  # float64's smallest subnormal is 2**-1074
_LARGEST = 1024  # every finite float64 is below 2**1024


class ExactSum:
    """Exact sums of float64 values in each cell of an array of ``shape``.

    Parameters
    ----------
    shape : tuple of int
        The cells (one per channel, or channels x classes).
    quantum : int
        Exponent of the smallest unit kept: parts of a value below ``2**quantum`` are dropped
        (toward zero) before it is added. The default keeps every bit of every float64.
    limit : int
        Values must have magnitude below ``2**limit``; a larger one is an :class:`ArgumentError`.

    Examples
    --------
    >>> import numpy as np
    >>> from featvis._exact import ExactSum
    >>> total = ExactSum((1,))
    >>> total.add(np.zeros(3, np.intp), np.array([1e16, 1.0, -1e16]))
    >>> total.values().tolist()  # float64 summed left to right gives 0.0
    [1.0]
    """

    def __init__(self, shape: tuple[int, ...], *, quantum: int = _SMALLEST, limit: int = _LARGEST):
        if not _SMALLEST <= quantum < limit <= _LARGEST:
            raise ArgumentError(f"ExactSum needs {_SMALLEST} <= quantum < limit <= {_LARGEST}.")
        self.shape = tuple(int(s) for s in shape)
        self.quantum = quantum
        self.limit = limit
        # A mantissa of 53 bits, shifted by up to 31, spans three limbs past its first.
        self.nlimbs = (limit - quantum) // _BITS + 3
        self.limbs = np.zeros((int(np.prod(self.shape)), self.nlimbs), np.int64)
        self._adds = 0  # pieces added to one limb since the last carry, at most

    # -- adding ------------------------------------------------------------------------------

    def add(self, cells: np.ndarray, values: np.ndarray) -> None:
        """Add ``values[i]`` to the cell with flat index ``cells[i]`` (both 1-D, same length)."""
        values = np.asarray(values, np.float64).ravel()
        cells = np.asarray(cells, np.intp).ravel()
        if not np.isfinite(values).all():
            raise ArgumentError("ExactSum cannot add NaN or infinite values.")
        mantissa, exponent = np.frexp(values)  # values = mantissa * 2**exponent, |m| in [.5, 1)
        big = np.abs(mantissa) * float(1 << 53)
        m = big.astype(np.int64)  # exact: an integer below 2**53
        sign = np.where(mantissa < 0, -1, 1).astype(np.int64)
        t = exponent.astype(np.int64) - 53 - self.quantum  # the unit bit's place above quantum
        low = t < 0
        if low.any():  # below the quantum: drop those bits
            m[low] >>= np.minimum(-t[low], 62)
            t[low] = 0
        if (t + 53 > self.limit - self.quantum).any():
            raise ArgumentError(
                f"A value of magnitude {np.abs(values).max():g} is too large to sum exactly "
                f"(the limit is 2**{self.limit})."
            )
        limb = t // _BITS
        r = t % _BITS
        # m * 2**r = p2 * 2**64 + p1 * 2**32 + p0, each piece below 2**32.
        p0 = (m & ((np.int64(1) << (_BITS - r)) - 1)) << r
        p1 = (m >> (_BITS - r)) & _MASK
        p2 = (m >> _BITS) >> (_BITS - r)
        flat = self.limbs.reshape(-1)
        base = cells * self.nlimbs + limb
        if self._adds + len(values) >= _ADDS_BEFORE_CARRY:
            self._carry()
        np.add.at(flat, base, sign * p0)
        np.add.at(flat, base + 1, sign * p1)
        np.add.at(flat, base + 2, sign * p2)
        self._adds += len(values)

    def add_rows(self, values: np.ndarray) -> None:
        """Add each row of ``values`` (shape ``(n, *shape)``) to the cells, cell by cell."""
        values = np.asarray(values, np.float64)
        size = len(self.limbs)
        rows = values.reshape(-1, size)
        cells = np.broadcast_to(np.arange(size), rows.shape)
        self.add(cells.ravel(), rows.ravel())

    def merge(self, other: ExactSum) -> ExactSum:
        """A new sum holding both (the same shape, quantum and limit)."""
        if (self.shape, self.quantum, self.limit) != (other.shape, other.quantum, other.limit):
            raise ArgumentError("Cannot merge exact sums of different shapes or ranges.")
        out = ExactSum(self.shape, quantum=self.quantum, limit=self.limit)
        a, b = self.canonical(), other.canonical()
        out.limbs = a + b  # limbs below 2**32 (the last one aside): no overflow
        out._adds = 2
        return out

    # -- reading -----------------------------------------------------------------------------

    def _carry(self) -> None:
        """Propagate carries so that every limb but the last is in [0, 2**32)."""
        limbs = self.limbs
        for i in range(self.nlimbs - 1):
            carry = limbs[:, i] >> _BITS  # floor division: a negative limb borrows
            limbs[:, i] -= carry << _BITS
            limbs[:, i + 1] += carry
        self._adds = 1

    def canonical(self) -> np.ndarray:
        """The limbs in their one canonical form (equal sums give equal arrays)."""
        self._carry()
        return self.limbs.copy()

    def integers(self) -> list[int]:
        """Each cell's sum as an exact integer multiple of ``2**quantum``."""
        self._carry()
        out = []
        for row in self.limbs.tolist():
            total = 0
            for limb in reversed(row):
                total = (total << _BITS) + limb
            out.append(total)
        return out

    def values(self, divisors: np.ndarray | None = None) -> np.ndarray:
        """Each cell's sum (divided by ``divisors``, integers > 0) correctly rounded to float64.

        A cell whose divisor is 0 is NaN.
        """
        ints = self.integers()
        scale = -self.quantum  # sum = integer / 2**scale (the quantum is below 1)
        divs = [1] * len(ints) if divisors is None else [int(d) for d in np.ravel(divisors)]
        out = np.empty(len(ints), np.float64)
        for i, (total, d) in enumerate(zip(ints, divs)):
            if d == 0:
                out[i] = np.nan
            elif scale >= 0:
                out[i] = total / (d << scale)  # int / int: correctly rounded
            else:
                out[i] = (total << -scale) / d
        return out.reshape(self.shape)

    @classmethod
    def from_limbs(cls, limbs: np.ndarray, shape: tuple[int, ...], quantum: int, limit: int):
        """Rebuild a sum saved with :meth:`canonical`."""
        out = cls(shape, quantum=quantum, limit=limit)
        if limbs.shape != out.limbs.shape:
            raise ArgumentError(f"Saved limbs of shape {limbs.shape} do not fit {out.limbs.shape}.")
        out.limbs = np.array(limbs, np.int64)
        out._adds = 1
        return out
