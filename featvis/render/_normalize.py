"""normalize (MATLAB's mat2gray and friends), and the channel scores behind strongest_channel."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

from featvis._errors import ArgumentError

__all__ = [
    "TIEBREAK",
    "Scope",
    "normalize",
    "strongest_channel",
    "tied_channels",
    "top_channels",
]

Scope = Literal["global", "channel"]
#: Percentile clipping: ``p`` for ``(p, 100 - p)``, or ``(low, high)``.
Clip = float | tuple[float, float] | None


@dataclass(frozen=True)
class _Range:
    """``(a - low) * scale`` maps the range to [0, 1]; low/scale broadcast against ``a``."""

    low: np.ndarray | np.float32
    scale: np.ndarray | np.float32
    finite: bool  # a held no NaN or infinity
    clipped: bool  # values may fall outside the range (clip or limits)


def _percentiles(clip: Clip) -> tuple[float, float]:
    try:
        low, high = (
            (float(clip), 100.0 - float(clip))
            if isinstance(clip, (int, float))
            else (float(clip[0]), float(clip[1]))  # type: ignore[index]
        )
    except (TypeError, ValueError, IndexError):
        low = high = float("nan")
    if not 0.0 <= low < high <= 100.0:
        raise ArgumentError(f"clip takes percentiles 0 <= low < high <= 100, got {clip!r}.")
    return low, high


def _range(
    a: np.ndarray, scope: str, clip: Clip = None, limits: tuple[float, float] | None = None
) -> _Range:
    """The normalization range of ``a``: over the whole array or per channel (last two axes)."""
    if scope not in ("global", "channel"):
        raise ArgumentError(f"scope must be 'global' or 'channel', got {scope!r}.")
    if limits is not None and clip is not None:
        raise ArgumentError("Give either limits or clip, not both.")
    if limits is not None and scope != "global":
        raise ArgumentError("limits fix one shared range; use them with scope='global'.")
    if a.size == 0:
        raise ArgumentError(f"Cannot normalize an empty array (shape {a.shape}).")
    channelwise = scope == "channel" and a.ndim > 2
    flat = a.reshape(-1, a.shape[-2] * a.shape[-1]) if channelwise else a.reshape(1, -1)
    lo: np.ndarray
    hi: np.ndarray
    if limits is not None:
        low, high = float(limits[0]), float(limits[1])
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise ArgumentError(f"limits must be finite with low < high, got {limits!r}.")
        lo, hi = np.array([low]), np.array([high])
        finite = bool(np.isfinite(flat.min()) and np.isfinite(flat.max()))
    elif clip is not None:
        q = _percentiles(clip)
        finite = bool(np.isfinite(flat).all())
        data = flat if finite else np.where(np.isfinite(flat), flat, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: handled below
            bounds = np.nanpercentile(data, q, axis=1)
        lo, hi = bounds[0], bounds[1]
    else:
        lo, hi = flat.min(axis=1), flat.max(axis=1)
        finite = bool(np.isfinite(lo).all() and np.isfinite(hi).all())
        if not finite:  # NaN or inf present: the range comes from the finite values only
            mask = np.isfinite(flat)
            lo = np.where(mask, flat, np.inf).min(axis=1)
            hi = np.where(mask, flat, -np.inf).max(axis=1)
    lows = np.asarray(lo, np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf for rows without finite values
        span = np.asarray(hi, np.float64) - lows
    flat_range = ~(span > 0)  # constant, or no finite values at all
    offset = np.where(flat_range, np.where(np.isfinite(lows), lows, 0.0), lows)
    scale = np.where(flat_range, 0.0, 1.0 / np.where(flat_range, 1.0, span))
    shape = (*a.shape[:-2], 1, 1) if channelwise else ()
    return _Range(
        low=offset.reshape(shape).astype(np.float32),
        scale=scale.reshape(shape).astype(np.float32),
        finite=finite,
        clipped=limits is not None or clip is not None,
    )


def _fix_nonfinite(out: np.ndarray, a: np.ndarray, top: float) -> None:
    """After scaling: +inf -> ``top``, -inf -> 0, NaN stays NaN (even where the scale was 0)."""
    with np.errstate(invalid="ignore"):
        np.clip(out, 0.0, top, out=out)
    out[np.isposinf(a)] = top
    out[np.isneginf(a)] = 0.0
    out[np.isnan(a)] = np.nan


def normalize(
    a: np.ndarray,
    *,
    scope: Scope = "global",
    clip: Clip = None,
    limits: tuple[float, float] | None = None,
) -> np.ndarray:
    """Scale activations to [0, 1] for display.

    Parameters
    ----------
    a : ndarray, shape (..., H, W)
        Activations, e.g. ``(N, C, H, W)``. Not modified.
    scope : {"global", "channel"}
        ``"global"`` is MATLAB's ``mat2gray``: the minimum of the whole array maps to 0 and the
        maximum to 1, so channels can be compared. ``"channel"`` scales each ``H x W`` map alone,
        so weak channels become visible too.
    clip : float or (float, float), optional
        Percentiles to use as the range instead of min and max (``1`` means ``(1, 99)``), which
        keeps a few extreme values from washing out the rest. Values beyond are clipped.
    limits : (float, float), optional
        A fixed range, to compare several images or layers on one scale. Values beyond are
        clipped.

    Returns
    -------
    ndarray of float32, same shape as ``a``
        A new array. A constant array (or channel) maps to 0. NaN and infinities are left out
        when finding the range; NaN stays NaN, +inf maps to 1 and -inf to 0.

    Examples
    --------
    >>> import numpy as np
    >>> from featvis import normalize
    >>> normalize(np.array([[2.0, 4.0], [6.0, 10.0]])).tolist()
    [[0.0, 0.25], [0.5, 1.0]]
    >>> normalize(np.array([[[1.0, 3.0]], [[5.0, 5.0]]]), scope="channel").tolist()
    [[[0.0, 1.0]], [[0.0, 0.0]]]
    """
    a = np.asarray(a)
    if a.ndim < 2:
        raise ArgumentError(f"normalize takes an array of at least 2 dimensions, got {a.shape}.")
    a32 = a.astype(np.float32, copy=False)
    r = _range(a32, scope, clip, limits)
    out = np.subtract(a32, r.low)
    with np.errstate(invalid="ignore"):  # inf * 0 for a constant range is fixed just below
        np.multiply(out, r.scale, out=out)
    if not r.finite:
        _fix_nonfinite(out, a32, 1.0)
    elif r.clipped:
        np.clip(out, 0.0, 1.0, out=out)
    return out


def one_image(a: np.ndarray, what: str) -> np.ndarray:
    """``a`` as an array, (1, C, H, W) taken as its (C, H, W); a batch of several is an error."""
    a = np.asarray(a)
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise ArgumentError(
                f"{what} looks at one image, got a batch of {a.shape[0]}; pass acts[i]."
            )
        a = a[0]
    return a


def _channel_view(a: np.ndarray, what: str) -> np.ndarray:
    """One image's channels as (C, H*W): accepts (C, H, W) or (1, C, H, W)."""
    a = one_image(a, what)
    if a.ndim != 3:
        raise ArgumentError(f"{what} takes (C, H, W) or (1, C, H, W), got shape {a.shape}.")
    return a.reshape(a.shape[0], -1)


def _channel_scores(a: np.ndarray, by: str, what: str) -> np.ndarray:
    flat = _channel_view(a, what)
    if by not in ("max", "mean", "l2"):
        raise ArgumentError(f"by must be 'max', 'mean' or 'l2', got {by!r}.")
    if by == "max":
        scores = flat.max(axis=1).astype(np.float64)
        if np.isnan(scores).any():
            scores = np.where(np.isnan(flat), -np.inf, flat).max(axis=1).astype(np.float64)
    else:
        values = flat.astype(np.float64)
        if np.isnan(values).any():
            values = np.where(np.isnan(values), 0.0, values)
        scores = values.mean(axis=1) if by == "mean" else np.sqrt((values * values).sum(axis=1))
    if not (scores > -np.inf).any():
        raise ArgumentError(f"{what}: every activation is NaN, so no channel stands out.")
    return scores


#: The second criterion that orders channels tying under the first, then the lower index.
TIEBREAK = {"max": "mean", "mean": "max", "l2": "max"}


def _ranking(a: np.ndarray, by: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Channel indices strongest first, and the scores under ``by`` in that order."""
    scores = _channel_scores(a, by, what)
    second = _channel_scores(a, TIEBREAK[by], what)
    order = np.lexsort((np.arange(len(scores)), -second, -scores))
    return order, scores[order]


def strongest_channel(a: np.ndarray, *, by: Literal["max", "mean", "l2"] = "max") -> int:
    """The channel with the largest activation, as MATLAB's ``max(max(max(act)))`` finds it.

    Parameters
    ----------
    a : ndarray, shape (C, H, W) or (1, C, H, W)
        One image's activations.
    by : {"max", "mean", "l2"}
        ``"max"``: the channel holding the largest single value (MATLAB's way); ``"mean"``: the
        largest mean; ``"l2"``: the largest L2 norm. NaN values are ignored.

    Returns
    -------
    int
        A 0-based channel index (MATLAB counts from 1: its channel 32 is featvis's 31).
        Channels that tie under ``by`` are told apart by a second criterion, stated in
        :data:`TIEBREAK`: under ``"max"`` the largest mean wins (after a clipped ReLU such as
        ReLU6 many channels reach the ceiling, and MATLAB's ``max`` would just take the first),
        under ``"mean"`` and ``"l2"`` the largest max; then the lower index.
        :func:`tied_channels` says whether a tie happened.

    Examples
    --------
    >>> import numpy as np
    >>> from featvis import strongest_channel
    >>> a = np.zeros((3, 2, 2)); a[1, 0, 0] = 5.0; a[2] = 2.0
    >>> strongest_channel(a), strongest_channel(a, by="mean")
    (1, 2)
    >>> relu6 = np.zeros((3, 2, 2)); relu6[:, 0, 0] = 6.0; relu6[2, 1, 1] = 1.0
    >>> strongest_channel(relu6)  # all three reach 6.0; channel 2 has the largest mean
    2
    """
    return int(_ranking(a, by, "strongest_channel")[0][0])


def tied_channels(a: np.ndarray, *, by: Literal["max", "mean", "l2"] = "max") -> list[int]:
    """The channels that share the strongest score under ``by``, in the order
    :func:`strongest_channel` ranks them (its answer first). One channel means no tie.

    Examples
    --------
    >>> import numpy as np
    >>> from featvis.render import tied_channels
    >>> relu6 = np.zeros((3, 2, 2)); relu6[:, 0, 0] = 6.0; relu6[2, 1, 1] = 1.0
    >>> tied_channels(relu6)
    [2, 0, 1]
    """
    order, scores = _ranking(a, by, "tied_channels")
    return [int(i) for i in order[scores == scores[0]]]


def top_channels(a: np.ndarray, k: int, *, by: Literal["max", "mean", "l2"] = "max") -> list[int]:
    """The ``k`` strongest channels, strongest first (see :func:`strongest_channel`).

    Returns fewer than ``k`` indices when the layer has fewer channels; ties are ordered as
    :func:`strongest_channel` orders them.

    Examples
    --------
    >>> import numpy as np
    >>> from featvis import top_channels
    >>> top_channels(np.arange(4.0).reshape(4, 1, 1), 2)
    [3, 2]
    """
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ArgumentError(f"k must be a positive integer, got {k!r}.")
    order, _ = _ranking(a, by, "top_channels")
    return [int(i) for i in order[:k]]
