"""The one error of the configuration: :class:`ConfigError`."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """An invalid configuration: unknown key, wrong type or impossible value (names the key).

    Args:
        *problems: one sentence per problem; the message is them joined by spaces, and
            :attr:`problems` keeps them apart (so a caller can say where each key came from).
    """

    def __init__(self, *problems: str) -> None:
        super().__init__(" ".join(problems))
        self.problems = list(problems)
