"""Results memoised per immutable object (a schedule): keyed by identity, guarded by a weak reference."""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Any, TypeVar
from collections.abc import Callable, Hashable

T = TypeVar("T")


class IdentityCache:
    """The last ``size`` results of ``build()`` per (object, key), for objects that never change.

    An entry holds a weak reference to its object and is used only while that reference still
    points at the same object, so a recycled ``id`` never returns another object's result.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[tuple, tuple[weakref.ref, Any]] = OrderedDict()

    def get(self, obj: Any, key: Hashable, build: Callable[[], T]) -> T:
        """The cached result for (obj, key), or ``build()`` stored for next time."""
        k = (id(obj), key)
        hit = self._entries.get(k)
        if hit is not None and hit[0]() is obj:
            self._entries.move_to_end(k)
            return hit[1]  # type: ignore[no-any-return]
        out = build()
        self._entries[k] = (weakref.ref(obj), out)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return out

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()
