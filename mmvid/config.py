"""Configs: dataclass defaults <- YAML file <- ``key=value`` overrides (the Meta Lingua idiom).

A config is a plain ``@dataclass`` living beside the code it configures. ``load_config`` fills it
from its defaults, then a YAML file, then each override in order, type-checking every value
before the dataclass (and its ``__post_init__``) is built; unknown keys fail at once::

    @dataclass
    class OptimConfig:
        lr: float = 3e-4
        betas: tuple[float, ...] = (0.9, 0.95)

    @dataclass
    class TrainConfig:
        steps: int = 1000
        precision: Literal["fp32", "bf16"] = "bf16"
        optim: OptimConfig = field(default_factory=OptimConfig)

    cfg = load_config(TrainConfig, "train/configs/sft.yaml", ["optim.lr=1e-4", "optim.betas=0.9,0.99"])
    save_config(cfg, run_dir / "config.yaml")  # the resolved config, kept in the run folder
    cfg = parse_config(TrainConfig)  # in a script: python train/sft.py --config sft.yaml steps=20

A key the config no longer has but old saved configs hold is listed, with the reason, in the class's
``REMOVED_KEYS: ClassVar[dict[str, str]]``: it is ignored with a FutureWarning instead of failing.

Override values are strings parsed by the field's type: ints, floats (``1e-4``), bools
(``true/false/yes/no/1/0``), ``null``/``none``/``~`` where the type allows None, lists and tuples
as ``a,b,c`` or ``[1, 2]``, dicts as ``{a: 1}``. A dict or list is always replaced whole.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import sys
import types
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

_NULLS = {"null", "none", "~"}
_TRUES = {"true", "yes", "1"}
_FALSES = {"false", "no", "0"}


class ConfigError(ValueError):
    """A config file or override that does not fit the config dataclass."""


def load_config(cls, path: str | os.PathLike | None = None, overrides: Sequence[str] = ()):
    """Build ``cls`` from its defaults, then the YAML file at ``path``, then ``key=value`` overrides."""
    data: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from e
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    data = copy.deepcopy(dict(data))
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {override!r} is not of the form key=value")
        _set_dotted(cls, data, key.strip(), value)
    return _build(_check(data, cls, "", None))


def config_from_dict(cls, data: Mapping):
    """Build ``cls`` from a nested mapping (e.g. a run's saved config), with ``load_config``'s checks."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping of config keys, got {type(data).__name__}")
    return _build(_check(copy.deepcopy(dict(data)), cls, "", None))


def config_to_dict(config) -> dict:
    """The config as plain dicts, lists and scalars (YAML/JSON-serializable); init fields only."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"expected a dataclass instance, got {type(config).__name__}")
    return _plain(config)


def _plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # init=False fields are derived in __post_init__; saving them would make the file unloadable.
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return {k: _plain(v) for k, v in value.items()} if isinstance(value, Mapping) else value


def save_config(config, path: str | os.PathLike) -> None:
    """Write ``config_to_dict(config)`` as YAML, atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=None))
    os.replace(tmp, path)


def parse_config(cls, argv: Sequence[str] | None = None, description: str | None = None):
    """A script's command line: ``[--config FILE] [key=value ...]``; ``--help`` lists every key.

    Bad input prints ``error: <message>`` to stderr and exits with status 2.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(_help(cls, description))
        raise SystemExit(0)
    path, overrides = None, []
    try:
        args = iter(argv)
        for arg in args:
            if arg == "--config" or arg.startswith("--config="):
                if path is not None:
                    raise ConfigError("--config given more than once")
                path = arg.partition("=")[2] if "=" in arg else next(args, None)
                if not path:
                    raise ConfigError("--config needs a file: --config FILE")
            elif arg.startswith("-"):
                raise ConfigError(f"unknown option {arg!r}; usage: [--config FILE] [key=value ...]")
            else:
                overrides.append(arg)
        return load_config(cls, path, overrides)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from e


# Loading is two passes: _check turns YAML/override values into typed values (a _Section for each
# dataclass) and raises on any bad key or type; only then does _build construct the dataclasses.


@dataclasses.dataclass
class _Section:
    cls: type
    key: str  # dotted key of this section ("" at the top)
    values: dict[str, Any]  # checked values of the keys that were given
    base: Any  # the parent's default for this section, or None


def _fields(cls) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = get_type_hints(cls)  # resolves `from __future__ import annotations` strings
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls) if f.init}


def _unknown(name, valid: Sequence[str], prefix: str) -> ConfigError:
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
    level = f"under '{prefix[:-1]}'" if prefix else "at the top level"
    return ConfigError(f"unknown key '{prefix}{name}'{hint}; valid keys {level}: {', '.join(valid)}")


def _removed(cls, name, prefix: str) -> bool:
    """True, with a FutureWarning, for a key in ``cls.REMOVED_KEYS``."""
    reason = getattr(cls, "REMOVED_KEYS", {}).get(name)
    if reason is not None:
        warnings.warn(f"config key '{prefix}{name}' is ignored: {reason}", FutureWarning, stacklevel=2)
    return reason is not None


def _section_class(tp) -> type | None:
    """The dataclass of a field typed ``Sub`` or ``Sub | None``, else None."""
    if get_origin(tp) in (Union, types.UnionType):
        subs = [a for a in get_args(tp) if dataclasses.is_dataclass(a)]
        return subs[0] if len(subs) == 1 else None
    return tp if dataclasses.is_dataclass(tp) else None


def _set_dotted(cls, data: dict, key: str, value: str) -> None:
    """Put an override's (string) value at its dotted place in ``data``, failing on unknown keys."""
    parts = key.split(".")
    for depth, name in enumerate(parts):
        prefix = "".join(p + "." for p in parts[:depth])
        fields = _fields(cls)
        if name not in fields:
            if depth == len(parts) - 1 and _removed(cls, name, prefix):
                return
            raise _unknown(name, list(fields), prefix)
        if depth == len(parts) - 1:
            data[name] = value
            return
        cls = _section_class(fields[name][1])
        field_tp = fields[name][1]
        if cls is None and depth == len(parts) - 2 and (field_tp is dict or get_origin(field_tp) is dict):
            # one key of a mapping field (model_overrides.decoder_head=conv), merged into what is there
            current = data.get(name, _default(fields[name][0]))  # unset: the field's default mapping
            if current is dataclasses.MISSING:
                current = None
            if isinstance(current, str):
                current = _flow_yaml(current, prefix + name) if current else {}
            if current is not None and not isinstance(current, Mapping):
                raise ConfigError(f"'{prefix}{name}' is not a mapping ({current!r}): set it whole")
            item = yaml.safe_load(value) if isinstance(value, str) else value
            data[name] = {**(current or {}), parts[-1]: item}
            return
        if cls is None:
            raise ConfigError(f"'{prefix}{name}' is not a config section; set it whole: {prefix}{name}=...")
        if not isinstance(data.get(name), dict):
            data[name] = {}
        data = data[name]


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING


def _type_name(tp) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return f"one of {list(args)}"
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if tp is type(None) or tp is Ellipsis:
        return "None" if tp is type(None) else "..."
    if origin is not None and args:
        return f"{_type_name(origin)}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(tp, "__name__", repr(tp).replace("typing.", ""))


def _check(value, tp, key: str, base):
    """``value`` converted to type ``tp``, or a ConfigError naming ``key``; dataclasses -> _Section."""
    bad = ConfigError(f"{key or 'config'}: expected {_type_name(tp)}, got {value!r}")
    origin, args = get_origin(tp), get_args(tp)
    text = value.strip() if isinstance(value, str) else None
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None or (type(None) in args and text is not None and text.lower() in _NULLS):
            if type(None) in args:
                return None
            raise bad
        options, errors = [a for a in args if a is not type(None)], []
        for option in options:
            try:
                return _check(value, option, key, base)
            except ConfigError as e:
                errors.append(e)
        # `Sub | None`, `list[int] | None`: the inner error says more (which key, which item).
        raise errors[0] if len(options) == 1 and options[0] not in (bool, int, float, str) else bad
    if origin is Literal:
        for allowed in args:
            try:
                if _check(value, type(allowed), key, None) == allowed:
                    return allowed
            except ConfigError:
                pass
        raise bad
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else _check_section(value, tp, key, base)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in _TRUES | _FALSES:
            return text.lower() in _TRUES
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        try:
            return int(text)  # "3.5" and "1e3" fail here, on purpose
        except (TypeError, ValueError):
            raise bad from None
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            return float(text)  # YAML reads `1e-4` (no dot) as a string; this parses it
        except (TypeError, ValueError):
            raise bad from None
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if tp in (list, tuple) or origin in (list, tuple):
        if text is not None and text.startswith("["):
            value = _flow_yaml(text, key)
        elif text is not None:
            value = [part.strip() for part in text.split(",")] if text else []
        if not isinstance(value, (list, tuple)):
            raise bad
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items ({_type_name(tp)}), got {value!r}")
            item_types = args
        else:
            item_types = [args[0] if args else Any] * len(value)
        items = [_check(v, t, f"{key}[{i}]", None) for i, (v, t) in enumerate(zip(value, item_types))]
        return tuple(items) if tuple in (tp, origin) else items
    if tp is dict or origin is dict:
        if text is not None and (text.startswith("{") or not text):
            value = _flow_yaml(text, key) if text else {}
        if not isinstance(value, Mapping):
            raise bad
        key_tp, value_tp = args or (Any, Any)
        return {
            _check(k, key_tp, f"{key} (a key)", None): _check(v, value_tp, f"{key}.{k}", None)
            for k, v in value.items()
        }
    raise TypeError(f"{key}: unsupported config field type {_type_name(tp)}")


def _check_section(value, tp, key: str, base) -> _Section:
    """A mapping of dataclass ``tp``'s keys, each checked against its field (``_check``)."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping of {tp.__name__} keys, got {value!r}")
    prefix, fields, checked = (key + "." if key else ""), _fields(tp), {}
    for name, item in value.items():
        if name not in fields:
            if _removed(tp, name, prefix):
                continue
            raise _unknown(name, list(fields), prefix)
        f, field_tp = fields[name]
        sub_base = _default(f) if base is None else getattr(base, name)
        sub_base = sub_base if dataclasses.is_dataclass(sub_base) else None
        checked[name] = _check(item, field_tp, prefix + name, sub_base)
    for name, (f, _) in fields.items():
        if name not in checked and base is None and _default(f) is dataclasses.MISSING:
            raise ConfigError(f"missing required key '{prefix}{name}' ({_type_name(fields[name][1])})")
    return _Section(tp, key, checked, base)


def _flow_yaml(text: str, key: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}: cannot parse {text!r} as a YAML flow list or mapping: {e}") from None


def _build(value):
    """Construct the dataclasses of checked values, innermost first, so each ``__post_init__`` runs."""
    if isinstance(value, _Section):
        kwargs = {name: _build(v) for name, v in value.values.items()}
        try:
            # Start from the parent's default only when it differs from the class's own defaults:
            # replace() keeps values that __post_init__ derived from the old ones.
            if value.base is not None and not _is_class_default(value.base):
                return dataclasses.replace(value.base, **kwargs)
            return value.cls(**kwargs)
        except ValueError as e:
            raise ConfigError(f"{value.key or value.cls.__name__}: {e}") from e
    if isinstance(value, (list, tuple)):
        return type(value)(_build(v) for v in value)
    if isinstance(value, dict):
        return {k: _build(v) for k, v in value.items()}
    return value


def _is_class_default(instance) -> bool:
    try:
        return instance == type(instance)()
    except Exception:  # required fields, or a __post_init__ that rejects the bare defaults
        return False


def _help(cls, description: str | None) -> str:
    lines = [f"usage: {Path(sys.argv[0]).name} [--config FILE] [key=value ...]", ""]
    if description:
        lines += [description, ""]
    rows = []  # (dotted key, type, default)

    def walk(section_cls, default, prefix):
        for name, (f, tp) in _fields(section_cls).items():
            value = getattr(default, name) if default is not None else _default(f)
            shown = "(required)" if value is dataclasses.MISSING else f"= {_plain(value)!r}"
            sub = _section_class(tp)
            if sub is None or value is None:
                rows.append((prefix + name, _type_name(tp), shown))
            if sub is not None:
                walk(sub, value if isinstance(value, sub) else None, f"{prefix}{name}.")

    walk(cls, None, "")
    width = max((len(key) for key, _, _ in rows), default=0)
    return "\n".join(lines + ["keys (type = default):"] + [f"  {k:<{width}}  {t} {d}" for k, t, d in rows])
