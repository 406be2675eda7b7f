"""Optional dependencies: import one, or say in one sentence which extra installs it.

The core install (``pip install deit``) holds what models and training need; the extras of
``pyproject.toml`` add the rest: ``onnx`` (onnx, onnxscript, onnxruntime), ``analysis``
(matplotlib), ``tensorboard``, ``demo`` (mlxtend, scikit-learn, matplotlib) and ``all``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it.
    The ``deit`` command prints it as a one-line error."""


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` (e.g. ``"onnx"``) and return it.

    Args:
        module: the module to import.
        extra: the ``deit`` extra that installs it (``"onnx"``, ``"analysis"``, ...).
        what: the feature that needs it, starting the sentence (``"deit export --format onnx"``).

    Raises:
        MissingExtraError: ``module`` cannot be imported; the message is one sentence, e.g.
            "deit export --format onnx needs the onnx extra: pip install 'deit[onnx]'."
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{what} needs the {extra} extra: pip install 'deit[{extra}]'."
        ) from e
