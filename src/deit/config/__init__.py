"""One typed configuration for a DeiT run: defaults, presets, YAML and command-line flags.

:class:`Config` is a flat, frozen pydantic model whose field names are the ``dest`` names of
the official DeiT ``main.py`` argparse parser (``args.lr``, ``args.drop_path``, ``args.data_set``,
...), so code written against the official ``args`` reads a ``Config`` unchanged. Defaults are
the official defaults (the paper's recipe, Table 9) except where noted in a field's help
(``device='auto'``, ``data_path=''``).

Precedence, lowest first: field defaults < ``--preset NAME`` < ``--config FILE.yaml`` <
flags given on the command line (:func:`config_from_args`).

Every field is read by the code that runs (a test checks it). Official flags deit has no use for
(``--start_epoch``, ``--world_size``, ``--dist_url``, ``--resplit``) still parse, with a note
saying why they are unused (:data:`RETIRED`). Presets live in :data:`PRESETS` alone; the files
``configs/<name>.yaml`` are generated from it by :func:`write_preset_yaml` (a test checks they
are up to date).

Modules, one concern each (lowest first): :mod:`~deit.config.errors` (:class:`ConfigError`),
:mod:`~deit.config.checks` (names, combinations, and the sentence of each problem),
:mod:`~deit.config.yamlfile` (reading a YAML file), :mod:`~deit.config.schema` (the fields with
their types, ranges and choices, validated by pydantic),
:mod:`~deit.config.presets` and :mod:`~deit.config.flags` (the command line).

Example::

    parser = argparse.ArgumentParser()
    add_config_args(parser)
    config = config_from_args(parser.parse_args())  # validated Config
    save_run_config(config, config.output_dir)  # writes <output_dir>/config.yaml
"""

from .errors import ConfigError
from .flags import add_config_args, config_from_args
from .presets import PRESETS, get_preset, list_presets, preset_overrides, write_preset_yaml
from .schema import ALIASES, RETIRED, Config, check_config_file, save_run_config
from .yamlfile import load_yaml_dict

__all__ = [
    "Config",
    "ConfigError",
    "PRESETS",
    "list_presets",
    "get_preset",
    "preset_overrides",
    "add_config_args",
    "config_from_args",
    "load_yaml_dict",
    "check_config_file",
    "RETIRED",
    "ALIASES",
    "save_run_config",
    "write_preset_yaml",
]
