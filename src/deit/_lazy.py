"""A package's public names imported from their submodules on first use (PEP 562), so that
importing the package loads nothing heavy (torch) until a name is used."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def exports(
    namespace: dict[str, Any], names: dict[str, str], submodules: bool = False
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of the package whose globals are
    ``namespace``: a name of ``names`` (public name -> the submodule defining it) is imported on
    its first use and kept; with ``submodules``, another public name imports that submodule."""
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        if name in names:
            value = getattr(importlib.import_module(f".{names[name]}", package), name)
            namespace[name] = value
            return value
        if submodules and not name.startswith("_"):
            try:
                return importlib.import_module(f".{name}", package)
            except ModuleNotFoundError as e:
                if e.name != f"{package}.{name}":
                    raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted([*namespace, *names])

    return __getattr__, __dir__
