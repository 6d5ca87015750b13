"""The interfaces derived from the configuration's one declaration (memopt/config.py): the command line,
its one-line errors, and the README's parameter table.

    python -m memopt.cli --readme README.md     # rewrite the README's table from the fields
"""
from __future__ import annotations

import shlex
import sys
import typing
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, CliSettingsSource, SettingsConfigDict, SettingsError

from memopt.config import WHY_BOUND, CompareConfig, ConfigError, TrainingOptions

M = TypeVar("M", bound=BaseModel)


# --- errors ----------------------------------------------------------------------------------

def _field(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str, FieldInfo | None]:
    """The flag a user types for the error at `loc` (the training options' short names), and its field."""
    name, info = "", None
    for part in loc:
        if not isinstance(part, str) or info is not None and not _is_model(info.annotation):
            break
        fields = (info.annotation if info is not None else model).model_fields
        if part not in fields:
            break
        name, info = part, fields[part]
    return name, info


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _kind(info: FieldInfo | None) -> str:
    """What a value of the field (an item, for a list or a dict's values) must be, in words."""
    annotation = info.annotation if info else None
    while typing.get_origin(annotation) in (list, dict):
        annotation = typing.get_args(annotation)[-1]
    types = set(typing.get_args(annotation) or (annotation,)) - {type(None)} if info else set()
    return "an integer" if types == {int} else "a number" if types <= {int, float} and types else "a value"


BOUNDS = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"), "less_than_equal": ("<=", "le"),
          "less_than": ("<", "lt")}


def describe_error(exc: ValidationError, model: type[BaseModel]) -> str:
    """The first error as one line: `--NAME: got VALUE; must be ...`."""
    error = exc.errors(include_url=False)[0]
    name, info = _field(model, tuple(error["loc"]))
    value, kind, ctx = error.get("input"), error["type"], error.get("ctx", {})
    if kind == "value_error":
        message = str(ctx["error"])
        return message if message.startswith("--") or not name else f"--{name}: {message}"
    if kind == "missing":
        return f"--{name}: missing; {info.description if info else 'required'}"
    if kind == "extra_forbidden":
        return f"unrecognized arguments: --{error['loc'][-1]}"
    # a number the user typed is shown as typed; a value that is no number at all, quoted
    shown = value if (kind in BOUNDS or kind == "finite_number") and isinstance(value, str) else repr(value)
    if kind in BOUNDS:
        op, key = BOUNDS[kind]
        bound = ctx[key]
        why = f" ({WHY_BOUND[bound]})" if bound in WHY_BOUND else ""
        must = f"{_kind(info)} {op} {bound if isinstance(bound, int) else f'{bound:g}'}{why}"
    elif kind == "finite_number":
        must = "a finite number"
    elif kind == "literal_error":
        must = "one of " + ", ".join(str(c) for c in typing.get_args(info.annotation)) if info else error["msg"]
    elif kind.startswith(("int_", "float_")):
        must = _kind(info) if info else error["msg"]
    elif kind.startswith("bool_"):
        must = "true or false"
    else:
        must = error["msg"][0].lower() + error["msg"][1:]
    return f"--{name}: got {shown}; must be {must}"


def validate(model: type[M], data: Any) -> M:
    """`model` from `data`, or ConfigError with the one-line message."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_error(exc, model)) from None


# --- the command line --------------------------------------------------------------------------

def from_command_line(model: type[M], argv: list[str], prog: str, description: str = "") -> M:
    """`model` from `--NAME VALUE` flags derived from its fields (pydantic-settings); the training options
    also go by their short names (`--batch_size` for `--training.batch_size`). `--help` lists them all."""

    class CommandLine(BaseSettings, model):  # type: ignore[misc, valid-type]
        __doc__ = description or model.__doc__
        model_config = SettingsConfigDict(
            cli_prog_name=prog, cli_exit_on_error=False, case_sensitive=True, cli_hide_none_type=True,
            cli_avoid_json=True, nested_model_default_partial_update=True,
            cli_shortcuts={f"training.{k}": k for k in TrainingOptions.model_fields},
        )

        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, **other_sources):  # noqa: ANN001
            return (init_settings,)  # the flags alone: no environment variables, no .env files

    try:
        parsed = CommandLine(_cli_settings_source=CliSettingsSource(CommandLine, cli_parse_args=argv))
    except SettingsError as exc:
        raise ConfigError(str(exc).removeprefix("error parsing CLI: ")) from None
    except ValidationError as exc:
        raise ConfigError(describe_error(exc, model)) from None
    return validate(model, parsed.model_dump())


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, dict):  # method_args: METHOD.NAME=VALUE,...; method_lr_grid: METHOD=[LR,...],...
        return ",".join(f"{m}=[{_flag_value(v)}]" if isinstance(v, list) else
                        ",".join(f"{m}.{k}={x!r}" for k, x in v.items()) for m, v in value.items())
    return str(value)


def command_line(cfg: CompareConfig, prog: str = "python -m flows.compare") -> str:
    """The command that runs `cfg` again: every parameter that differs from its default, as typed (the training
    options by their short names); the tracking URI included, a resume left out."""
    def flags(model: BaseModel, skip: set[str]) -> list[str]:
        out = []
        for name, info in type(model).model_fields.items():
            value = getattr(model, name)
            if name not in skip and value != info.get_default(call_default_factory=True):
                out += [f"--{name}", shlex.quote(_flag_value(value))]
        return out

    args = [*flags(cfg, {"training", "resume"}), *flags(cfg.training, set())]
    return " ".join([prog, *args])


# --- the README's table ------------------------------------------------------------------------

TABLE_START, TABLE_END = "<!-- parameters: generated by `python -m memopt.cli --readme README.md` -->", "<!-- /parameters -->"


def _default_text(info: FieldInfo) -> str:
    value = info.get_default(call_default_factory=True)
    if value in (None, "", {}, []):
        return "—"
    if isinstance(value, list):
        value = ",".join(map(str, value))
    return f"`{str(value).lower() if isinstance(value, bool) else value}`"


def parameter_table() -> str:
    """Markdown: one row per parameter of a comparison, the training options under their short names."""
    fields = {k: v for k, v in CompareConfig.model_fields.items() if k != "training"}
    rows = [f"| `{name}` | {_default_text(info)} | {info.description} |"
            for name, info in {**fields, **TrainingOptions.model_fields}.items()]
    return "\n".join(["| parameter | default | meaning |", "|---|---|---|", *rows])


def rewrite_readme(path: Path) -> None:
    text = path.read_text()
    head, _, rest = text.partition(TABLE_START)
    _, _, tail = rest.partition(TABLE_END)
    path.write_text(f"{head}{TABLE_START}\n{parameter_table()}\n{TABLE_END}{tail}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--readme"] and len(sys.argv) == 3:
        rewrite_readme(Path(sys.argv[2]))
    else:
        print(parameter_table())
