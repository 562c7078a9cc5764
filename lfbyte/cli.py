"""The command line of every entry point: one ``error:`` line and exit 2 for any bad input.

``hydra_cli`` runs an entry point over ``conf/<name>.yaml``: it composes what the command line asks for
first (:func:`check_overrides` turns Hydra's multi-line errors into one line, and runs the entry
point's own validation on every job of a sweep) and only then hands over to ``@hydra.main``.
:func:`one_line_errors` is the guard every entry point's body runs under, Hydra or not.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from .config import CONF_DIR, KEYS_HINT, check_output_dir, did_you_mean, to_plain
from .errors import ConfigError, LFByteError, exit_with, shown

Claim = Callable[[dict, Path, bool], None]  # (job config, run or sweep dir, multirun) -> None or raise


@contextmanager
def one_line_errors() -> Iterator[None]:
    """An entry point's body: a :class:`LFByteError` is one ``error:`` line and exit 2; a closed pipe
    (``| head``) ends quietly with 141, Ctrl-C with 130. Anything else is a bug and keeps its traceback."""
    try:
        yield
    except LFByteError as e:
        exit_with(e)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit flush must not fail again
        sys.exit(141)  # 128 + SIGPIPE
    except KeyboardInterrupt:
        sys.exit(130)


# Hydra flags after which the command line is not a plain list of overrides to compose.
_PASS_THROUGH = {"-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "-i", "--info", "-cp", "--config-path",
                 "-cn", "--config-name", "-cd", "--config-dir", "-p", "--package", "-sc", "--shell-completion",
                 "--experimental-rerun", "--resolve"}


def hydra_cli(
    config_name: str, task: Callable[[DictConfig], Any], *, flat: bool = False,
    check: Callable[[dict], None] | None = None, claim: Claim | None = None,
) -> None:
    """``python -m lfbyte.<entry>``: the command line checked first (one ``error:`` line, exit 2, see
    :func:`check_overrides`), then ``conf/<config_name>.yaml`` composed by Hydra and handed to ``task``."""
    import hydra

    with one_line_errors():
        check_overrides(config_name, sys.argv[1:], flat=flat, check=check, claim=claim)
    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)(task)()


def check_overrides(
    config_name: str, argv: Sequence[str], *, flat: bool = False, check: Callable[[dict], None] | None = None,
    claim: Claim | None = None,
) -> None:
    """Compose the config the command line asks for, and turn Hydra's multi-line errors into one line.

    Runs before ``@hydra.main`` (exit code 1 and several lines otherwise): a typo in a key, a group
    option that does not exist, an override that does not parse, or an uncreatable run/sweep dir is
    a :class:`ConfigError`. In a multirun (``-m``, or a config that sets ``hydra.mode: MULTIRUN``)
    every value of every swept key is composed, and ``check`` (the entry point's own validation) runs
    on each, so a bad job stops the sweep before the first job trains. ``claim`` then gets the run (or
    sweep) directory, before Hydra writes anything into it.
    ``flat`` configs (generate, app) have every option as a key of their one file, so a key added
    with ``+`` (which Hydra would accept and the program ignore) or removed with ``~`` is refused too.
    """
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException
    from hydra.types import RunMode

    if any(a.split("=", 1)[0] in _PASS_THROUGH for a in argv):
        return  # --help, --cfg job, ...: Hydra's own modes
    raw = [a for a in argv if not a.startswith("-")]
    parser = OverridesParser.create()
    parsed = []
    for arg in raw:  # one at a time, to name the one that does not parse
        try:
            parsed += parser.parse_overrides([arg])
        except OverrideParseException as e:
            raise ConfigError(f"cannot parse the override {arg!r}: {str(e).strip().splitlines()[0]} (quote "
                              "values with spaces, commas or brackets: key=\"'a, b'\")") from None
    sweeps: dict[int, list[str]] = {}
    for i, o in enumerate(parsed):
        if o.is_sweep_override():
            try:
                sweeps[i] = [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
            except Exception:  # noqa: BLE001 - e.g. an Optuna interval(): the sweeper checks it
                sweeps[i] = []
    plain = [a for i, a in enumerate(raw) if i not in sweeps]
    known = _flat_keys(config_name) if flat else None
    GlobalHydra.instance().clear()
    try:
        firsts = [v[0] for v in sweeps.values() if v]
        cfg = _compose(config_name, plain + firsts, flat, known)
        multirun = any(a in ("-m", "--multirun") for a in argv) or (
            not flat and OmegaConf.select(cfg, "hydra.mode") == RunMode.MULTIRUN)
        if sweeps and not multirun:
            cfg = _compose(config_name, raw, flat, known)  # Hydra's own words for a sweep without -m
        jobs: list[list[str]] = [firsts]
        for i, values in sweeps.items():  # each value once (not the product: that can be huge)
            jobs += [[v if j == i else w[0] for j, w in sweeps.items() if w] for v in values[1:]]
        for swept in jobs:
            job = cfg if swept is firsts else _compose(config_name, plain + swept, flat, known)
            if check is not None:
                _check_job(job, check, swept if multirun and swept else None)
    finally:
        GlobalHydra.instance().clear()
    if not flat:
        key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
        try:
            out = OmegaConf.select(cfg, key)
        except Exception as e:  # noqa: BLE001 - e.g. ${oc.env:NOPE}
            raise ConfigError(f"{key}: {str(e).strip().splitlines()[0]}") from None
        if isinstance(out, str):
            check_output_dir(out, key)
            if claim is not None:
                claim(to_plain(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])), Path(out), multirun)


def _compose(config_name: str, overrides: list[str], flat: bool, known: list[str] | None) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        try:
            cfg = compose(config_name, overrides=overrides, return_hydra_config=not flat)
        except MissingConfigException as e:
            raise ConfigError(_missing_option(str(e))) from None
        except HydraException as e:
            raise ConfigError(_override_problem(str(e), config_name, overrides, known)) from None
        except OSError as e:  # e.g. a group option longer than a file name can be
            raise ConfigError(f"cannot compose the config: a config group option cannot be read "
                              f"({e.strerror or e}); choose one of the options in conf/<group>/") from None
        except (ValueError, TypeError) as e:  # e.g. model=0: a group option that is a number, not a name
            group = next((o.split("=", 1)[0] for o in overrides if (CONF_DIR / o.split("=", 1)[0].lstrip("+~")).is_dir()
                          and "Config group override" in str(e)), None)
            if group is not None:
                value = next(o.split("=", 1)[1] for o in overrides if o.startswith(group + "="))
                options = sorted(p.stem for p in (CONF_DIR / group.lstrip("+~")).glob("*.yaml"))
                raise ConfigError(f"{group}={value} is not an option; choose one of: {', '.join(options)}") from None
            raise ConfigError(f"cannot compose the config: {str(e).strip().splitlines()[0]}") from None
    if known is not None:
        for key in cfg:
            if key not in known:
                raise ConfigError(_unknown_flat(str(key), config_name, known))
        for key in known:
            if key not in cfg:
                raise ConfigError(f"{key} cannot be removed (~{key}); set it instead, e.g. {key}=null")
    return cfg


def _check_job(cfg: DictConfig, check: Callable[[dict], None], overrides: list[str] | None) -> None:
    """The entry point's validation on one composed job (without the hydra node, which only a run resolves)."""
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    try:
        check(to_plain(job))
    except ConfigError as e:
        if overrides is None:
            raise
        where = f"in the sweep job with {' '.join(overrides)}: "
        raise ConfigError("\n".join(where + line for line in str(e).splitlines())) from None


def _flat_keys(config_name: str) -> list[str]:
    data = yaml.safe_load((CONF_DIR / f"{config_name}.yaml").read_text()) or {}
    return [k for k in data if k not in ("defaults", "hydra")]


def _unknown_flat(key: str, config_name: str, known: list[str]) -> str:
    return (f"{key} is not a known option{did_you_mean(key, known)}; the options are {', '.join(known)} "
            f"(conf/{config_name}.yaml)")


# Hydra options that come from a plugin package (the ``cluster`` extra), by config path.
PLUGINS = {
    "hydra/sweeper/optuna": "hydra-optuna-sweeper",
    "hydra/sweeper/sampler": "hydra-optuna-sweeper",
    "hydra/launcher/submitit_slurm": "hydra-submitit-launcher",
    "hydra/launcher/submitit_local": "hydra-submitit-launcher",
    "hydra/launcher/joblib": "hydra-joblib-launcher",
}
EXTRA_HINT = "pip install 'lfbyte[cluster]' (in a checkout: pip install -e '.[cluster]')"


def _missing_plugin(message: str) -> str | None:
    """The one line for an option whose Hydra plugin is not installed, or None."""
    m = re.search(r"Could not (?:find|load) '([^']+)'", message)
    path = m.group(1) if m else ""
    package = next((pkg for prefix, pkg in PLUGINS.items() if path == prefix or path.startswith(prefix + "/")), None)
    if package is None:
        return None
    used = re.search(r"In '([^']+)'", message)  # one of our presets (conf/hydra/...) that builds on the plugin
    ours = used is not None and (CONF_DIR / f"{used.group(1)}.yaml").is_file()
    group, _, name = (used.group(1) if ours else path).rpartition("/")
    return f"{group}={name} needs the {package} plugin, which is not installed; install it: {EXTRA_HINT}"


def _missing_option(message: str) -> str:
    if plugin := _missing_plugin(message):
        return plugin
    m = re.search(r"Could not find '([^']+)'", message)
    options = re.findall(r"^\t(\S+)$", message.split("Config search path")[0], flags=re.M)
    if not m:
        return message.splitlines()[0]
    group, _, name = m.group(1).rpartition("/")
    if not group:
        return f"config {name!r} not found"
    return f"{group}={shown(name)} is not an option{did_you_mean(name, options)}; choose one of: {', '.join(options)}"


def _override_problem(message: str, config_name: str, overrides: list[str], known: list[str] | None) -> str:
    if plugin := _missing_plugin(message):
        return plugin
    m = re.search(r"Could not override '([^']+)'", message)
    if not m:
        return "; ".join(line.strip() for line in message.splitlines() if line.strip())
    key = m.group(1)
    if known is not None:
        return _unknown_flat(key, config_name, known)
    parent, _, leaf = key.rpartition(".")
    hint = ""
    try:  # suggest the nearest existing key under the same parent
        from hydra import compose

        rest = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != key]
        node = compose(config_name, overrides=rest)
        node = OmegaConf.select(node, parent) if parent else node
        if isinstance(node, DictConfig):
            hint = did_you_mean(leaf, list(node.keys()), parent + "." if parent else "")
    except Exception:  # noqa: BLE001 - the suggestion is a nicety
        pass
    return f"{key} is not a known option{hint}; {KEYS_HINT}"
