"""Tiny name -> factory registries, one per contract (segmentation models, MIL heads, tile encoders, stages...).

>>> models = Registry("model")
>>> @models.register("double")
... def double(x): return 2 * x
>>> models.get("double")(3)
6
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from medseg.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            if name in self._items and self._items[name] is not fn:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise ConfigError(f"unknown {self.kind} '{name}' (known: {known})") from None

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
