"""One rule for every job's parameters: the model's defaults, then a YAML file, then dotted overrides, then flags.

A job's config model (:mod:`flows.jobs`) states each parameter once, with its
type, default and description; the command line is derived from it here
(``--config FILE``, ``--set key=value`` or a positional ``key=value`` for
any field, nested ones dotted, and a flag for each of the main fields), so
the command line cannot disagree with the model. Every mistake, an unknown
key, a wrong type, a missing field, a file that is not YAML, becomes a
:class:`ConfigError` of one line naming the key. Only the standard library,
PyYAML and pydantic are imported: this runs before Prefect, torch or Dask.
"""

from __future__ import annotations

import argparse
import difflib
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo


class ConfigError(ValueError):
    """A job's parameters cannot be read or do not validate; the message is one line naming the key."""


def load_config(
    model: type[BaseModel],
    path: Path | str | None = None,
    overrides: Sequence[str] = (),
    flags: Mapping[str, Any] | None = None,
    flag_names: Mapping[str, str] | None = None,
    preset: Mapping[str, Any] | None = None,
) -> BaseModel:
    """The job config: ``model``'s defaults, ``preset``, the YAML file ``path``, ``key=value`` overrides, then flags.

    ``preset`` is what a command changes from the model's defaults (``register-plism``: ``stage=register``).

    ``flags`` maps dotted field names to values; ``None`` means "not given".
    ``flag_names`` (dotted field to ``--flag``) lets a missing required field
    be reported by the flag that sets it.
    """
    data = {**(preset or {}), **(_read_yaml(path) if path else {})}
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value, model)
    for key, value in (flags or {}).items():
        if value is not None:
            _set_dotted(data, key, value, model)
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_one_line(error, model, path, flag_names or {})) from None


def parse_override(text: str) -> tuple[str, Any]:
    """``"tiling.tile_size_px=256"`` → ``("tiling.tile_size_px", 256)``; the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{text!r} is not key=value (e.g. tiling.tile_size_px=256)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _read_yaml(path: Path | str) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"--config {path}: cannot be read ({error})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(error, 'problem', None) or error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of parameter names to values, found {type(data).__name__}")
    return data


def _set_dotted(data: dict, key: str, value: Any, model: type[BaseModel]) -> None:
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if isinstance(child, BaseModel):
            child = node[part] = child.model_dump()
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: depth + 1])} is not a section: cannot set {key}")
        node = child
    node[parts[-1]] = value


def _one_line(
    error: ValidationError, model: type[BaseModel], path: Path | str | None, flag_names: Mapping[str, str]
) -> str:
    problems = []
    for item in error.errors():
        loc = [str(part) for part in item["loc"]]
        key = ".".join(loc)
        if item["type"] == "extra_forbidden":
            known = _field_names_at(model, loc[:-1])
            close = difflib.get_close_matches(loc[-1], known, n=1)
            hint = f" (did you mean {'.'.join([*loc[:-1], close[0]])}?)" if close else ""
            problems.append(f"unknown key {key}{hint}")
        elif item["type"] == "missing":
            flag = flag_names.get(key)
            problems.append(f"{key} is required" + (f" (give {flag})" if flag else ""))
        else:
            message = item["msg"].removeprefix("Value error, ")  # a model validator's own message
            problems.append(f"{key}: {message} (got {item.get('input')!r})" if key else message)
    where = f"{path}: " if path else ""
    return where + "; ".join(problems)


def _field_names_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    for part in loc:
        info = model.model_fields.get(part)
        nested = _model_of(info.annotation) if info else None
        if nested is None:
            return []
        model = nested
    return list(model.model_fields)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def field_at(model: type[BaseModel], dotted: str) -> FieldInfo:
    """The pydantic field of a dotted name, e.g. ``tiling.tile_size_px`` of a job model."""
    *sections, name = dotted.split(".")
    for part in sections:
        nested = _model_of(model.model_fields[part].annotation)
        if nested is None:
            raise KeyError(f"{part} of {dotted} is not a section")
        model = nested
    return model.model_fields[name]


def add_config_arguments(parser: argparse.ArgumentParser, model: type[BaseModel], flags: Mapping[str, str]) -> None:
    """Add ``--config``, ``--set``, positional ``key=value`` and one option per ``flags`` entry (flag → field).

    Each option's type, choices and help come from the field; its argparse
    default is ``None`` ("not given"), so a flag never hides what the file says.
    """
    parser.add_argument("--config", type=Path, help="YAML file of the job's parameters (any field, nested by section)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="KEY=VALUE",
        help="set any field, nested ones dotted (e.g. tiling.tissue.min_saturation=30); repeatable",
    )
    parser.add_argument("positional_overrides", nargs="*", metavar="KEY=VALUE", help="the same as --set KEY=VALUE")
    for flag, dotted in flags.items():
        info = field_at(model, dotted)
        kwargs = _argparse_kwargs(info)
        if "action" not in kwargs:
            kwargs["metavar"] = dotted.rsplit(".", 1)[-1].upper()
        parser.add_argument(flag, dest=_dest(dotted), default=None, **kwargs)


def config_from_args(
    model: type[BaseModel],
    args: argparse.Namespace,
    flags: Mapping[str, str],
    preset: Mapping[str, Any] | None = None,
    more_flags: Mapping[str, Any] | None = None,
) -> BaseModel:
    """The job config given by parsed arguments (see :func:`add_config_arguments`).

    ``more_flags`` (dotted key to value, ``None`` when not given) are options a command parsed itself,
    e.g. ``serve``'s ``--cron-NAME`` that set a key of a dict field.
    """
    values = {dotted: getattr(args, _dest(dotted)) for dotted in flags.values()} | dict(more_flags or {})
    return load_config(
        model,
        args.config,
        [*args.overrides, *args.positional_overrides],
        values,
        {dotted: flag for flag, dotted in flags.items()},
        preset,
    )


def _dest(dotted: str) -> str:
    return "field__" + dotted.replace(".", "__")


def _argparse_kwargs(info: FieldInfo) -> dict[str, Any]:
    annotation = _without_none(info.annotation)
    default = None if info.is_required() else info.get_default(call_default_factory=True)
    text = info.description or ""
    text += " (required)" if info.is_required() else f" (default {_show(default)})"
    kwargs: dict[str, Any] = {"help": text.strip().replace("%", "%%")}
    origin = get_origin(annotation)
    if annotation is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin is Literal:
        choices = get_args(annotation)
        kwargs.update(choices=choices, type=type(choices[0]))
    elif origin in (list, tuple):
        args = [a for a in get_args(annotation) if a is not Ellipsis]
        fixed = origin is tuple and Ellipsis not in get_args(annotation)
        kwargs.update(nargs=len(args) if fixed else "+", type=_scalar(args[0] if args else str))
    else:
        kwargs["type"] = _scalar(annotation)
    return kwargs


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _scalar(annotation: Any) -> Any:
    annotation = _without_none(annotation)
    if get_origin(annotation) is Literal:
        return type(get_args(annotation)[0])
    return annotation if annotation in (int, float, str) else str


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) if value else "none"
    return "none" if value is None else str(value)
