"""Name -> object registries, so a config can name a user's own dataset, task
distribution, backbone or algorithm.

Contract: ``REGISTRY.register("name")(obj)`` (or as a decorator) makes ``obj``
available to configs under ``name``; ``REGISTRY.get(name)`` returns it or raises
``KeyError`` with a one-line message listing the registered names.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, Any] = {}

    def register(self, name: str, obj: Any = None, *, overwrite: bool = False):
        def add(item):
            if name in self._items and not overwrite and self._items[name] is not item:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return add(obj) if obj is not None else add

    def get(self, name: str) -> Any:
        if name not in self._items:
            raise KeyError(
                f"unknown {self.kind} {name!r}; registered: {', '.join(sorted(self._items)) or '(none)'}"
            )
        return self._items[name]

    def names(self) -> List[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


    def user_entries(self) -> Dict[str, Any]:
        """Entries registered from outside distmeta (a user's script or tests)."""
        return {n: o for n, o in self._items.items()
                if not getattr(o, "__module__", "distmeta").startswith("distmeta")}


DATASETS = Registry("dataset")
TASKS = Registry("task distribution")
MODELS = Registry("model")
ALGORITHMS = Registry("algorithm")


REGISTRIES = {"dataset": DATASETS, "task": TASKS, "model": MODELS, "algorithm": ALGORITHMS}


def user_registrations() -> Dict[str, Dict[str, Any]]:
    """Every user registration, by registry, to re-register in another process."""
    return {kind: reg.user_entries() for kind, reg in REGISTRIES.items() if reg.user_entries()}


def restore_registrations(snapshot: Dict[str, Dict[str, Any]]) -> None:
    for kind, entries in snapshot.items():
        for name, obj in entries.items():
            REGISTRIES[kind].register(name, obj, overwrite=True)
