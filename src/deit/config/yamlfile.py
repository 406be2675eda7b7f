"""Reading a YAML configuration file: one mapping, each key once, problems in one sentence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

__all__ = ["load_yaml_dict"]


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping setting one key twice (PyYAML keeps the last
    value without a word)."""

    source = ""  # the file named in the error

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        """The mapping of ``node``; a :class:`ConfigError` when a key comes twice."""
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue
            key, line = self.construct_object(key_node), key_node.start_mark.line + 1
            if key in lines:
                raise ConfigError(
                    f"{self.source} sets {key!r} twice (lines {lines[key]} and {line}), so one "
                    "value would be lost; keep one of them."
                )
            lines[key] = line
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(path: Path, e: yaml.YAMLError) -> ConfigError:
    """One sentence for a YAML syntax error: what and where (PyYAML's own text spans lines)."""
    mark = getattr(e, "problem_mark", None)
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return ConfigError(f"{path} is not valid YAML ({what}{where}); fix the file there.")


def load_yaml_dict(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (``{}`` for an empty file) with ``yaml.safe_load`` semantics.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: a folder, an unreadable or non-text (binary) file, invalid YAML, a key set
            twice, or not a mapping; one sentence naming the file.
    """
    path = Path(path)
    if path.is_dir():
        inside = path / "config.yaml"
        hint = f" such as {inside}" if inside.is_file() else ""
        raise ConfigError(f"The config file {path} is a folder; pass the YAML file itself{hint}.")
    if not path.is_file():
        raise FileNotFoundError(f"The config file {path} does not exist; check its path.")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"The config file {path} is not text (byte {e.start} is 0x{e.object[e.start]:02x}, "
            "not UTF-8); pass a YAML file of config keys."
        ) from None
    except OSError as e:
        raise ConfigError(
            f"The config file {path} cannot be read ({e.strerror}); check its permissions."
        ) from None
    loader = _UniqueKeyLoader(text)
    loader.source = str(path)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as e:
        raise _yaml_problem(path, e) from None
    finally:
        loader.dispose()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys to values.")
    return data
