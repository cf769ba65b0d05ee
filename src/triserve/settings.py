"""Every `triserve serve` setting also from TRISERVE_* environment variables and a YAML file
(`--config triserve.yaml`, or $TRISERVE_CONFIG), with pydantic-settings.

Precedence: a flag on the command line, then the environment, then the file, then the flag's
default. Names: the flag without its dashes, `--http-port` is `http-port:` (or `http_port:`) in the
file and TRISERVE_HTTP_PORT in the environment. Each value is checked as the flag checks it (the
same type and range functions, the same choices). Repeatable flags take a YAML list, or in the
environment a comma-separated list (TRISERVE_MODEL_REPOSITORY=a,b). `triserve config show` prints
the effective settings and where each came from; its output is itself a valid file.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable

ENV_PREFIX = "TRISERVE_"
CONFIG_ENV = "TRISERVE_CONFIG"
NOT_SETTINGS = {"help", "config", "func", "command"}  # serve's dests that are not settings


class SettingsError(Exception):
    """A setting from the environment or the file that its flag would refuse."""


@dataclass(frozen=True)
class Setting:
    dest: str  # http_port
    flag: str  # --http-port
    kind: str  # bool, int, float, str, list
    default: Any
    check: Callable[[str], Any] | None  # the flag's own type function
    choices: tuple | None

    @property
    def key(self) -> str:
        return self.flag.removeprefix("--")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()


def settings_of(serve: argparse.ArgumentParser) -> dict[str, Setting]:
    """The settings of serve's flags, by dest."""
    found = {}
    for action in serve._actions:
        if not action.option_strings or action.dest in NOT_SETTINGS:
            continue
        flag = max(action.option_strings, key=len)
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            kind, check = "bool", None
        elif isinstance(action, (argparse._AppendAction, argparse._ExtendAction)) or action.nargs in ("+", "*"):
            kind, check = "list", action.type
        elif action.type in (int, float):
            kind, check = action.type.__name__, action.type
        elif action.type is not None and isinstance(action.default, bool):
            kind, check = "bool", action.type  # --exit-on-error true: the flag's own true/false reader
        elif action.type is not None and isinstance(action.default, (int, float)):
            kind, check = type(action.default).__name__, action.type
        else:
            kind, check = "str", action.type
        found[action.dest] = Setting(action.dest, flag, kind, action.default, check,
                                     tuple(action.choices) if action.choices else None)
    return found


def given(serve: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The dests the command line set (`argv`: serve's own arguments). `serve` is changed: build a
    fresh parser for this."""
    for action in serve._actions:
        action.default = argparse.SUPPRESS
    return set(vars(serve.parse_args(argv)))


def _model(settings: dict[str, Setting], yaml_file: Path | None, env: dict[str, str]):
    from pydantic import AliasChoices, BeforeValidator, Field, create_model
    from pydantic_settings import (BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict,
                                   YamlConfigSettingsSource)

    fields: dict[str, Any] = {}
    for s in settings.values():
        validator = BeforeValidator(_checker(s))
        base: Any = {"bool": bool, "int": int, "float": float, "str": str, "list": list[str]}[s.kind]
        if s.default is None:
            base = base | None
        annotated = Annotated[base, NoDecode, validator] if s.kind == "list" else Annotated[base, validator]
        default = list(s.default) if isinstance(s.default, list) else s.default
        fields[s.dest] = (annotated, Field(default=default, validation_alias=AliasChoices(s.dest, s.key)))

    class Base(BaseSettings):
        model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", case_sensitive=False,
                                          yaml_file=yaml_file, populate_by_name=True)

        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                       file_secret_settings):
            environment = EnvSettingsSource(settings_cls)
            environment.env_vars = {k.lower(): v for k, v in env.items()}  # `env`, not os.environ
            sources = [init_settings, environment]  # the first one that has a value wins
            if yaml_file is not None:
                sources.append(YamlConfigSettingsSource(settings_cls))
            return tuple(sources)

    return create_model("ServeSettings", __base__=Base, **fields)


def _checker(s: Setting) -> Callable[[Any], Any]:
    """A value as the flag reads it: strings through the flag's type function, choices checked."""

    def one(value: Any) -> Any:
        if s.check is not None and not isinstance(value, bool) and value is not None:
            try:
                value = s.check(str(value))
            except argparse.ArgumentTypeError as e:
                raise ValueError(str(e)) from None
            except (ValueError, TypeError):
                raise ValueError(f"expected {'an integer' if s.check is int else 'a number' if s.check is float else 'a valid value'},"
                                 f" got {value!r}") from None
        if s.choices is not None and value is not None and value not in s.choices:
            raise ValueError(f"expected one of {', '.join(map(str, s.choices))}, got {value!r}")
        return value

    def check(value: Any) -> Any:
        if s.kind == "list":
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list):
                value = [value]
            return [one(v) for v in value]
        if s.kind == "bool" and isinstance(value, str) and s.check is None:
            lowered = value.strip().lower()
            if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(f"expected true or false, got {value!r}")
            return lowered in ("1", "true", "yes", "on")
        return one(value)

    return check


def config_file(args: argparse.Namespace, env: dict[str, str]) -> Path | None:
    path = getattr(args, "config", None) or env.get(CONFIG_ENV)
    return Path(path) if path else None


def effective(serve: argparse.ArgumentParser, args: argparse.Namespace, given_dests: set[str],
              env: dict[str, str] | None = None) -> tuple[argparse.Namespace, dict[str, str]]:
    """`args` with every setting the command line left out taken from the environment or the file;
    and where each came from (flag, env NAME, file PATH or default)."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError as SourceError

    env = dict(os.environ if env is None else env)
    settings = settings_of(serve)
    path = config_file(args, env)
    file_keys = _file_keys(path)
    values = {dest: getattr(args, dest) for dest in given_dests if dest in settings}
    model = _model(settings, path, env)
    try:
        result = model(**values)
    except ValidationError as e:
        raise SettingsError("; ".join(_describe(error, settings, path) for error in e.errors())) from None
    except (SourceError, OSError, ValueError) as e:
        raise SettingsError(f"cannot read --config {path}: {e}") from None
    merged = argparse.Namespace(**vars(args))
    lowered = {k.upper(): k for k in env}
    sources = {}
    for dest, s in settings.items():
        setattr(merged, dest, getattr(result, dest))
        if dest in given_dests:
            sources[dest] = "flag"
        elif s.env in lowered:
            sources[dest] = f"env {s.env}"
        elif dest in file_keys or s.key in file_keys:
            sources[dest] = f"file {path}"
        else:
            sources[dest] = "default"
    return merged, sources


def _file_keys(path: Path | None) -> set[str]:
    """The keys of the --config file; one that cannot be read, or is not a mapping, is refused."""
    if path is None:
        return set()
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise SettingsError(f"cannot read --config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise SettingsError(f"--config {path} is not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if data is None:
        return set()
    if not isinstance(data, dict):
        raise SettingsError(f"--config {path} must be a mapping of setting: value, e.g. http-port: 9000")
    return {str(k) for k in data}


def _describe(error: dict, settings: dict[str, Setting], path: Path | None) -> str:
    where = str(error["loc"][0]) if error.get("loc") else "?"
    s = settings.get(where) or next((v for v in settings.values() if v.key == where), None)
    if s is None:
        return f"{where}: not a serve setting (in {path})" if error.get("type") == "extra_forbidden" else (
            f"{where}: {error['msg']}")
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{s.key} (flag {s.flag}, env {s.env}): {message}"


def show(settings_args: argparse.Namespace, sources: dict[str, str], settings: dict[str, Setting]) -> str:
    """The effective settings as YAML, each with where it came from."""
    lines = []
    for dest, s in settings.items():
        value = getattr(settings_args, dest)
        lines.append(f"{s.key}: {json.dumps(value)}  # {sources[dest]}")
    return "\n".join(lines) + "\n"
