"""Search spaces of ``wsi-ncmi tune``: the YAML files ``configs/tune_<loss>.yaml``.

A space file::

    include: tune_recipe.yaml        # optional: a file or a list, relative to this file,
                                     # merged first (an entry of this file replaces one of
                                     # the same key)
    space:                           # training-config key → how a trial samples it
      optim.lr:        {low: 1.0e-5, high: 1.0e-2, log: true}   # float, log-uniform
      model.dropout:   {low: 0.0, high: 0.5}                     # float, uniform
      optim.epochs:    {low: 20, high: 100, step: 20}            # int: low, high (step) integers
      optim.max_tiles: {choices: [256, 1024, null]}              # categorical
      loss.ncmi.temperature: {low: 0.05, high: 1.0, log: true}
    tune:                            # how the search runs; every key optional (defaults below)
      inner_folds: 5

Keys are paths into a training config (:mod:`wsi_ncmi.formats.config`): ``model.<key>``,
``optim.<key>`` or ``loss.<loss>.<setting>``. A parameter with ``choices`` is categorical (numbers,
text, true/false, null); otherwise it is an integer when ``low``, ``high`` (and ``step``) are
integers, else a float. ``log: true`` samples log-uniformly and needs ``low > 0``. Numbers such as
``1e-5`` that YAML reads as text are accepted.

``tune`` settings (:data:`TUNE_DEFAULTS`):

- ``inner_folds``: k of the patient-grouped inner folds over train+val used when the
  validation split is small;
- ``min_val_patients``: the validation split is small when a class has fewer patients in it
  than this (or it is empty);
- ``startup_trials``: random trials before the TPE sampler models the results;
- ``prune_after_trials``: finished trials before any trial is pruned;
- ``prune_warmup_epochs``: epochs of a trial's first (inner) fold before it can be pruned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from .config import DEFAULTS, load_yaml

TUNE_DEFAULTS: dict[str, int] = {"inner_folds": 5, "min_val_patients": 10,
                                 "startup_trials": 10, "prune_after_trials": 5,
                                 "prune_warmup_epochs": 10}
_TUNE_MINIMA = {"inner_folds": 2, "min_val_patients": 0, "startup_trials": 0,
                "prune_after_trials": 0, "prune_warmup_epochs": 0}
TUNED_SECTIONS = ("model", "optim", "loss")
_MISSING = object()


@dataclass(frozen=True)
class Param:
    """One searched setting: ``name`` (config key path), ``kind`` (float | int | categorical),
    ``low``/``high``/``step``/``log`` for numbers, ``choices`` for categorical."""

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple = ()

    def corners(self) -> list[Any]:
        """The values to check a space with: both bounds, or every choice."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]

    def holds(self, value: Any) -> bool:
        """Whether a trial could draw ``value`` (a choice, or a number within the bounds and
        on the step)."""
        if self.kind == "categorical":
            return any(value == c and type(value) is type(c) for c in self.choices)
        if not isinstance(value, int | float) or isinstance(value, bool):
            return False
        if not self.low <= value <= self.high:
            return False
        if self.kind == "int" and value != int(value):
            return False
        if self.step is None:
            return True
        steps = (value - self.low) / self.step
        return abs(steps - round(steps)) < 1e-9

    def largest(self) -> Any:
        """The largest number a trial can draw (the epoch budget when ``optim.epochs``)."""
        if self.kind != "categorical":
            return self.high
        return max(c for c in self.choices if isinstance(c, int | float))

    def as_dict(self) -> dict:
        """A plain record (what the study stores to recognise its space)."""
        if self.kind == "categorical":
            return {"choices": list(self.choices)}
        out = {"low": self.low, "high": self.high, "log": self.log}
        return out if self.step is None else {**out, "step": self.step}


@dataclass
class SearchSpace:
    """A loaded space: ``params`` by name, ``settings`` (``tune`` section with defaults),
    ``files`` (the space file and its includes)."""

    params: dict[str, Param]
    settings: dict[str, int]
    files: list[Path]

    def as_dict(self) -> dict:
        """The space and settings as plain data (YAML/JSON-safe)."""
        return {"space": {n: p.as_dict() for n, p in self.params.items()},
                "tune": dict(self.settings)}

    def values_in(self, cfg: dict) -> dict[str, Any]:
        """Parameter name → ``cfg``'s value of it (a resolved training config), for every
        parameter whose value there a trial could draw."""
        values = {}
        for name, param in self.params.items():
            node: Any = cfg
            for key in name.split("."):
                node = node.get(key, _MISSING) if isinstance(node, dict) else _MISSING
            if node is not _MISSING and param.holds(node):
                values[name] = node
        return values

    def losses(self) -> set[str]:
        """Losses whose settings the space searches (``loss.<name>.*`` keys)."""
        return {n.split(".")[1] for n in self.params if n.startswith("loss.")}


def load_space(path: Path) -> SearchSpace:
    """Read a space file and its includes; :class:`InputError` naming the file and every
    problem found."""
    raw, files = _merged(Path(path), ())
    unknown = sorted(set(raw) - {"space", "tune"})
    problems = [f"unknown section {k!r} (a space file holds include, space, tune)"
                for k in unknown]
    space, tune = raw.get("space") or {}, raw.get("tune") or {}
    if not isinstance(space, dict) or not space:
        problems.append("space must be a non-empty mapping of config keys")
        space = {}
    if not isinstance(tune, dict):
        problems.append("tune must be a mapping")
        tune = {}
    params = {}
    for name, spec in space.items():
        try:
            params[str(name)] = parse_param(str(name), spec)
        except InputError as exc:
            problems.append(str(exc))
    settings = dict(TUNE_DEFAULTS)
    for key, value in tune.items():
        if key not in TUNE_DEFAULTS:
            problems.append(f"unknown key tune.{key} (one of {', '.join(TUNE_DEFAULTS)})")
        elif isinstance(value, bool) or not isinstance(value, int) or \
                value < _TUNE_MINIMA[key]:
            problems.append(f"tune.{key} must be an integer ≥ {_TUNE_MINIMA[key]}")
        else:
            settings[key] = value
    if problems:
        raise InputError(f"{path}: {'; '.join(problems)}")
    return SearchSpace(params=params, settings=settings, files=files)


def _merged(path: Path, seen: tuple[Path, ...]) -> tuple[dict, list[Path]]:
    """The file's mapping with its includes merged under it, and every file read."""
    resolved = path.resolve()
    if resolved in seen:
        raise InputError(f"{path}: includes itself (through {', '.join(map(str, seen))})")
    data = load_yaml(path)
    include = data.pop("include", [])
    include = [include] if isinstance(include, str) else include
    if not isinstance(include, list) or not all(isinstance(i, str) for i in include):
        raise InputError(f"{path}: include must be a file name or a list of them")
    merged: dict = {}
    files: list[Path] = []
    for name in include:
        part, part_files = _merged(path.parent / name, (*seen, resolved))
        merged = _merge_entries(merged, part)
        files += part_files
    return _merge_entries(merged, data), [*files, path]


def _merge_entries(base: dict, override: dict) -> dict:
    """Sections merged key by key; a ``space`` entry is replaced whole, never mixed."""
    out = dict(base)
    for section, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(section), dict):
            out[section] = {**out[section], **value}
        else:
            out[section] = value
    return out


def _number(value: Any, what: str) -> float | int:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{what} must be a number, got {value!r}")
    return value


def _check_name(name: str) -> None:
    parts = name.split(".")
    section = parts[0]
    if section not in TUNED_SECTIONS:
        raise InputError(f"space key {name!r}: must start with "
                         f"{', '.join(s + '.' for s in TUNED_SECTIONS)}")
    if section == "loss":
        if len(parts) != 3:
            raise InputError(f"space key {name!r}: a loss setting is loss.<loss>.<setting>")
    elif len(parts) != 2 or parts[1] not in DEFAULTS[section]:
        raise InputError(f"space key {name!r}: {section} has no key {'.'.join(parts[1:])!r}")


def parse_param(name: str, spec: Any) -> Param:
    """One ``space`` entry (module docstring); :class:`InputError` naming it when malformed."""
    _check_name(name)
    if not isinstance(spec, dict):
        raise InputError(f"space.{name} must be a mapping (low/high or choices)")
    unknown = sorted(set(spec) - {"low", "high", "step", "log", "choices"})
    if unknown:
        raise InputError(f"space.{name}: unknown key(s) {', '.join(unknown)}")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices or \
                any(isinstance(c, dict | list) for c in choices) or \
                len({repr(c) for c in choices}) != len(choices):
            raise InputError(f"space.{name}: choices must be a non-empty list of distinct "
                             "plain values, alone")
        return Param(name, "categorical", choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise InputError(f"space.{name} needs low and high (or choices)")
    low = _number(spec["low"], f"space.{name}.low")
    high = _number(spec["high"], f"space.{name}.high")
    step = None if spec.get("step") is None else _number(spec["step"], f"space.{name}.step")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise InputError(f"space.{name}.log must be true or false")
    if not low < high:
        raise InputError(f"space.{name}: low must be below high")
    if log and low <= 0:
        raise InputError(f"space.{name}: log needs low > 0")
    if step is not None and (step <= 0 or log):
        raise InputError(f"space.{name}: step must be > 0, and not combined with log")
    ints = all(isinstance(v, int) for v in (low, high) + ((step,) if step is not None else ()))
    return Param(name, "int" if ints else "float", low, high, step, log)


def overrides(values: dict[str, Any]) -> dict:
    """``{"optim.lr": 1e-3, "loss.ncmi.temperature": 0.2}`` → the nested config mapping
    ``{"optim": {"lr": 1e-3}, "loss": {"ncmi": {"temperature": 0.2}}}``."""
    out: dict = {}
    for name, value in values.items():
        *path, key = name.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[key] = value
    return out
