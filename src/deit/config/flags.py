"""Command-line flags for every :class:`Config` field, and the run's configuration from them.

Flags use the official DeiT spellings (``--drop-path``, ``--data-set``, ``--output_dir``);
precedence, lowest first: field defaults < ``--preset NAME`` < ``--config FILE.yaml`` < flags.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from pydantic.fields import FieldInfo

from .._notes import print_note
from .checks import kind
from .errors import ConfigError
from .presets import list_presets, preset_overrides
from .schema import RETIRED, Config, check_config_file
from .yamlfile import load_yaml_dict

__all__ = ["add_config_args", "config_from_args"]

# Official spellings with underscores, accepted besides the dashed ones.
_UNDERSCORE_FLAGS = {"output_dir", "num_workers"}


def _flag(name: str) -> str:
    """The main option string of a field (``--drop-path``; ``--output_dir`` as official)."""
    return f"--{name}" if name in _UNDERSCORE_FLAGS else f"--{name.replace('_', '-')}"


def _none_or(tp: type) -> Any:
    """An argparse ``type`` reading ``none``/``null``/empty as ``None``, else ``tp(text)``."""

    def parse(s: str) -> Any:
        if s.lower() in ("none", "null", ""):
            return None
        return tp(s)

    parse.__name__ = tp.__name__
    return parse


def _help(f: FieldInfo, value: Any, preset: str = "") -> str:
    """A field's help line with the value a run takes when the flag is not given."""
    where = f", from --preset {preset}" if preset else ""
    return f"{f.description} (default: {value!r}{where})"


class _PresetAction(argparse.Action):
    """``--preset NAME``: stores the name and shows the preset's values as the defaults of the
    help that follows (``deit train --preset small --help``)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        setattr(namespace, self.dest, values)
        fields = Config.model_fields
        preset = preset_overrides(values)
        for action in parser._actions:
            if action.dest in preset and action.dest in fields:
                action.help = _help(fields[action.dest], preset[action.dest], values)


def _add_field(group: Any, name: str, f: FieldInfo, default: Any) -> None:
    """Add the flag of one field to ``group`` (the spellings, type, choices and help)."""
    meta = f.json_schema_extra
    flags = [_flag(name), *meta["flags"]]
    kw: dict[str, Any] = dict(dest=name, default=argparse.SUPPRESS, help=_help(f, default))
    if meta["metavar"]:
        kw["metavar"] = meta["metavar"]
    holds = kind(f.annotation)
    if holds.type is bool:
        group.add_argument(*flags, action=argparse.BooleanOptionalAction, **kw)
        return
    if holds.several:
        kw.update(nargs="+", type=holds.type)
    elif holds.optional:
        kw["type"] = _none_or(holds.type)
    else:
        kw["type"] = holds.type
        if holds.choices:
            kw["choices"] = list(holds.choices)
    group.add_argument(*flags, **kw)


def add_config_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add a flag for every :class:`Config` field, plus ``--preset`` and ``--config``.

    Flags use the official DeiT spellings (``--drop-path``, ``--data-set``, ``--output_dir``
    — dashed forms such as ``--output-dir`` are accepted too); booleans come as ``--x`` /
    ``--no-x``; list fields take several values (``--opt-betas 0.9 0.999``); optional numbers
    accept ``none``. Every flag defaults to ``argparse.SUPPRESS`` so that
    :func:`config_from_args` can tell what was typed. The help shows the field defaults, or a
    preset's values when ``--preset NAME`` comes before ``--help``.

    Returns:
        The parser.
    """
    parser.add_argument(
        "--preset",
        default=argparse.SUPPRESS,
        choices=list_presets(),
        action=_PresetAction,
        help="Named preset: the defaults below become its values (give --preset before --help "
        "to see them; --print-config prints every value a run would use).",
    )
    parser.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        metavar="FILE.yaml",
        help="YAML file of config keys (over the preset, under flags).",
    )
    groups: dict[str, Any] = {}
    defaults = Config.model_construct()  # unchecked: the checks of names would import timm
    for name, f in Config.model_fields.items():
        title = f.json_schema_extra["group"]
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        _add_field(groups[title], name, f, getattr(defaults, name))
    retired = parser.add_argument_group("official flags not used by deit")
    for name, why in RETIRED.items():
        flags = [f"--{name}", f"--{name.replace('_', '-')}"] if "_" in name else [f"--{name}"]
        extra = {"action": "store_true"} if name == "resplit" else {"metavar": "VALUE"}
        retired.add_argument(
            *flags,
            dest=f"retired_{name}",
            default=argparse.SUPPRESS,
            help=f"Not used: {why}.",
            **extra,
        )
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Build the run's :class:`Config` from parsed arguments.

    Order: defaults < ``args.preset`` < ``args.config`` (YAML) < flags present in ``args``
    (with :func:`add_config_args`, only typed flags are present). Attributes of ``args`` that
    are not config fields (e.g. a sub-command) are ignored.

    Raises:
        ConfigError: unknown preset; a YAML file that is a folder, not text or not YAML, sets
            a key twice, or holds an unknown key or a bad value (every key is checked, also
            those a flag overrides; each problem names the file and the key); an impossible
            value or combination of the merged configuration (each problem names the file or
            the flag that set its key).
        FileNotFoundError: the YAML file does not exist.
    """
    ns = vars(args)
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}  # key -> where its value came from, for the messages
    set_by: dict[str, str] = {}  # key -> who set it, for the notes of the run (Config.set_by)
    if ns.get("preset"):
        merged.update(preset_overrides(ns["preset"]))
        set_by.update(dict.fromkeys(merged, f"--preset {ns['preset']}"))
    if ns.get("config"):
        from_file = load_yaml_dict(ns["config"])
        check_config_file(from_file, ns["config"])  # also the values flags override
        merged.update(from_file)
        origin.update(dict.fromkeys(from_file, f"In {ns['config']}"))
        set_by.update(dict.fromkeys(from_file, str(ns["config"])))
    flags = {k: v for k, v in ns.items() if k in Config.field_names()}
    merged.update(flags)
    origin.update({k: f"With {_flag(k)}" for k in flags})
    set_by.update({k: _flag(k) for k in flags})
    for name, why in RETIRED.items():
        if f"retired_{name}" in ns:
            print_note(f"--{name} is not used: {why}.")
    try:
        return Config.from_dict(merged, set_by=set_by)
    except ConfigError as e:
        raise ConfigError(*(_from_where(p, origin) for p in e.problems)) from None


def _from_where(problem: str, origin: dict[str, str]) -> str:
    """``problem`` (a sentence starting with its key, ``'lr' is ...``) after the file or flag
    that set the key (``With --lr, 'lr' is ...``); unchanged for a default or a preset's value."""
    key = re.match(r"'(\w+)'", problem)
    if key is None or key[1] not in origin:
        return problem
    return f"{origin[key[1]]}, {problem[0].lower()}{problem[1:]}"
