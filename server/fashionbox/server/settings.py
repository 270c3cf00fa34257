"""Settings declared once: a dataclass field names its flag, its environment variable and its parser.

A field carries a :class:`Setting` in its metadata (``dataclasses.field(metadata=declare(...))``);
:func:`add_arguments`, :func:`values` and :func:`build` read those declarations, so the argparse
flags, the ``FASHIONBOX_*`` variables and the flag-over-variable precedence come from one place::

    port: int = dataclasses.field(default=8001, metadata=declare("gRPC port", flag="--grpc-port",
                                                                 env="GRPC_PORT", parser=INTEGER))

A field usually has one :class:`Input`; one built from several (TLS: certificate, key, client CA)
lists them and a ``combine`` function. Per input, a flag wins over its variable; a field none of
whose inputs is given keeps its default (or its declared ``fallback``, where the caller asks).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from fashionbox.contract import ENV_PREFIX
from fashionbox.server.errors import ConfigError

__all__ = [
    "BOOLEAN",
    "INTEGER",
    "NUMBER",
    "PATH",
    "SETTING",
    "TEXT",
    "Input",
    "Parser",
    "Setting",
    "add_arguments",
    "build",
    "declare",
    "declared",
    "one_of",
    "values",
]

SETTING = "fashionbox.setting"
"""The metadata key under which a dataclass field carries its :class:`Setting`."""

_T = TypeVar("_T")


@dataclass(frozen=True)
class Parser:
    """Text (a flag's word or a variable's value) to a value; ``what`` names the accepted form in errors."""

    what: str
    convert: Callable[[str], Any]
    choices: tuple[str, ...] = ()

    def __call__(self, name: str, text: str) -> Any:
        """The value of ``text``, or a :class:`ConfigError` naming ``name`` (a variable or a flag)."""
        try:
            return self.convert(text)
        except ValueError:
            raise ConfigError(f"{name} must be {self.what}, got {text!r}") from None

    def argparse_type(self) -> Callable[[str], Any]:
        def convert(text: str) -> Any:
            try:
                return self.convert(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected {self.what}, got {text!r}") from None

        convert.__name__ = self.what
        return convert


def _boolean(text: str) -> bool:
    # Explicit: bool("false") is True, which is never what anyone meant.
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def one_of(choices: Iterable[str]) -> Parser:
    """A parser accepting exactly one of ``choices``."""
    allowed = tuple(choices)

    def convert(text: str) -> str:
        if text not in allowed:
            raise ValueError(text)
        return text

    return Parser(f"one of {', '.join(allowed)}", convert, allowed)


TEXT = Parser("text", str)
PATH = Parser("a path", Path)
INTEGER = Parser("an integer", int)
NUMBER = Parser("a number", float)
BOOLEAN = Parser("one of true/false/1/0/yes/no/on/off", _boolean)

Many = Literal["comma", "shell"]
FlagForm = Literal["value", "switch", "on"]


@dataclass(frozen=True)
class Input:
    """One way a value comes in: ``flag`` and/or ``$FASHIONBOX_<env>``, both read by ``parser``.

    ``many``: the value is a tuple; the flag repeats, the variable is comma-separated ("comma") or
    shell words ("shell"). ``form``: "value" takes a word; "switch" is ``--x``/``--no-x`` (a boolean);
    "on" is a bare ``--x`` meaning True. ``bare``: the value of the flag given without its (then
    optional) word. ``name`` is the argparse destination; "" means the field's own name.
    """

    flag: str | None
    env: str | None
    parser: Parser = TEXT
    name: str = ""
    many: Many | None = None
    form: FlagForm = "value"
    bare: Any = None
    metavar: str | None = None
    help: str | None = None

    @property
    def variable(self) -> str | None:
        """The environment variable's full name, prefix included."""
        return ENV_PREFIX + self.env if self.env is not None else None

    def from_environment(self, environ: Mapping[str, str]) -> Any:
        """This input's value from ``environ``; None when the variable is unset or blank."""
        variable = self.variable
        raw = environ.get(variable) if variable is not None else None
        if variable is None or raw is None or not raw.strip():
            return None
        text = raw.strip()
        if self.many == "comma":
            return tuple(self.parser(variable, word.strip()) for word in text.split(",") if word.strip())
        if self.many == "shell":
            try:
                words = shlex.split(text)
            except ValueError as exc:
                raise ConfigError(f"{variable} must be shell words ({exc}), got {text!r}") from None
            return tuple(self.parser(variable, word) for word in words)
        return self.parser(variable, text)

    def argparse_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"dest": self.name, "default": None}
        if self.form == "switch":
            return {**options, "action": argparse.BooleanOptionalAction}
        if self.form == "on":
            return {**options, "action": "store_const", "const": True}
        if self.parser.choices:
            options["choices"] = self.parser.choices
        else:
            options["type"] = self.parser.argparse_type()
        if self.many is not None:
            options["action"] = "append"
        if self.bare is not None:
            options.update(nargs="?", const=self.bare)
        if self.metavar is not None:
            options["metavar"] = self.metavar
        return options


@dataclass(frozen=True)
class Setting:
    """How a field is given: its inputs and, for several, how their values make the field's."""

    help: str
    inputs: tuple[Input, ...]
    combine: Callable[[Mapping[str, Any]], Any] | None = None
    """Given the values of the inputs that were set (by input name), the field's value; None: one input."""
    group: str | None = None
    """The argparse group its flags are listed under."""
    shown_default: str | None = None
    """The default as ``--help`` says it, where the field's own default is None or absent."""
    fallback: Any = None
    """The value the command line uses when no input is given, for a field without a default."""

    def value(self, given: Mapping[str, Any]) -> Any:
        if self.combine is None:
            return given[self.inputs[0].name]
        return self.combine(given)


def declare(
    help: str,
    *,
    flag: str | None,
    env: str | None,
    parser: Parser = TEXT,
    many: Many | None = None,
    form: FlagForm = "value",
    bare: Any = None,
    metavar: str | None = None,
    group: str | None = None,
    shown_default: str | None = None,
    fallback: Any = None,
) -> dict[str, Setting]:
    """The metadata of a field given by one flag and one variable."""
    source = Input(flag, env, parser, many=many, form=form, bare=bare, metavar=metavar)
    return {SETTING: Setting(help, (source,), group=group, shown_default=shown_default, fallback=fallback)}


def declared(cls: type[Any]) -> list[tuple[dataclasses.Field[Any], Setting]]:
    """Every field of the dataclass ``cls`` that declares a setting, with its inputs named."""
    out = []
    for field in dataclasses.fields(cls):
        setting = field.metadata.get(SETTING)
        if setting is None:
            continue
        inputs = tuple(dataclasses.replace(i, name=i.name or field.name) for i in setting.inputs)
        out.append((field, dataclasses.replace(setting, inputs=inputs)))
    return out


def _has_default(field: dataclasses.Field[Any]) -> bool:
    return field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING


def values(
    cls: type[Any], environ: Mapping[str, str], given: Mapping[str, Any] | None = None, *, fallbacks: bool = False
) -> dict[str, Any]:
    """Field values from the inputs: each from ``given`` (parsed flags, by input name) unless None
    there, else from its variable. Fields with no input set are left out (they keep their defaults),
    or take their declared ``fallback`` when ``fallbacks`` is true."""
    given = given or {}
    out: dict[str, Any] = {}
    for field, setting in declared(cls):
        found: dict[str, Any] = {}
        for source in setting.inputs:
            value = given.get(source.name)
            if value is None:
                value = source.from_environment(environ)
            elif source.many is not None:
                value = tuple(value)
            if value is not None:
                found[source.name] = value
        if found:
            out[field.name] = setting.value(found)
        elif fallbacks and setting.fallback is not None:
            out[field.name] = setting.fallback
    return out


def build(cls: type[_T], changes: Mapping[str, Any]) -> _T:
    """``cls(**changes)``, refusing first a missing field that has no default, naming how to give it."""
    for field, setting in declared(cls):
        if field.name not in changes and not _has_default(field):
            ways = [w for s in setting.inputs for w in (s.flag, s.variable) if w is not None]
            raise ConfigError(f"no {setting.help}: pass {' or set '.join(ways)}")
    return cls(**changes)


def _default_text(field: dataclasses.Field[Any], setting: Setting) -> str | None:
    if setting.shown_default is not None:
        return setting.shown_default
    if setting.fallback is not None:
        return str(setting.fallback)
    default = field.default if field.default is not dataclasses.MISSING else None
    if isinstance(default, bool):
        return "on" if default else "off"
    if default is None or default == () or default == "":
        return None
    return str(default)


def add_arguments(parser: argparse.ArgumentParser, cls: type[Any]) -> None:
    """Add a flag for every declared input of ``cls`` that has one; every default is None (unset)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for field, setting in declared(cls):
        target: argparse.ArgumentParser | argparse._ArgumentGroup = parser
        if setting.group is not None:
            if setting.group not in groups:
                groups[setting.group] = parser.add_argument_group(setting.group)
            target = groups[setting.group]
        default = _default_text(field, setting)
        for source in setting.inputs:
            if source.flag is None:
                continue
            notes = [f"default {default}"] if default is not None and len(setting.inputs) == 1 else []
            notes += [f"${source.variable}"] if source.variable is not None else []
            text = source.help or setting.help
            target.add_argument(source.flag, help=f"{text} ({'; '.join(notes)})" if notes else text,
                                **source.argparse_options())
