"""Renamed keyword arguments: the old name keeps working for one release, with a warning."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from featvis._errors import ArgumentError

__all__ = ["REMOVED_IN", "renamed"]

#: The release that drops the old names.
REMOVED_IN = "0.3"

F = TypeVar("F", bound=Callable[..., Any])


def renamed(**old_to_new: str) -> Callable[[F], F]:
    """Accept each old keyword as its new name, warning with a :class:`DeprecationWarning`
    that names the new one. Giving both is an :class:`ArgumentError`."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise ArgumentError(
                            f"{fn.__name__}() got both {old}= and {new}=; {old}= is the old "
                            f"name of {new}=: pass only {new}=."
                        )
                    warnings.warn(
                        f"{fn.__name__}({old}=...) is deprecated and goes away in featvis "
                        f"{REMOVED_IN}: use {fn.__name__}({new}=...).",
                        DeprecationWarning,
                        stacklevel=2,
                    )
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
