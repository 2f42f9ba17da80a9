"""The plan of a conversion: which layer became which kind with which options.

A :class:`Plan` rebuilds a converted architecture on a freshly constructed model (``apply``) so
that a saved ``state_dict`` of the converted model loads into it. It is saved as JSON
(``{"version": 1, "target": ..., "layers": {path: {"kind": ..., "options": {...}}}}``, plus
``"deployment": {"target": ..., "precision": ..., "input_size": [...], "threads": ...}`` for a
mix chosen by latency on a deployment target, ``target`` then being ``"auto"``); a file
is checked field by field on load, and every kind and option again when the plan is applied
(the registry's rules), so a malformed or hostile file gives one clear error, never a module
built from unchecked values.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from torch import nn

from leanconv._files import write_atomic
from leanconv.conversion.surgery import build_module, conv_spec, jsonable, set_module
from leanconv.kinds import convertible_kinds, get_kind

PLAN_VERSION = 1
AUTO = "auto"
"""The plan target of a per-layer mix of kinds (``convert(to='auto')``)."""
_JSON_SCALARS = (str, int, float, bool, type(None))
_DEPLOYMENT_FIELDS = {"target": str, "precision": str, "input_size": list, "threads": int}


@dataclass(frozen=True)
class LayerPlan:
    """One converted layer: its kind and the kind's options (tuples, not lists)."""

    kind: str
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """Module path -> :class:`LayerPlan`, the kind the conversion was asked for (``'auto'``: a
    per-layer mix), and for a mix the deployment it was chosen for (target, precision,
    input size, threads)."""

    target: str
    layers: Dict[str, LayerPlan] = field(default_factory=dict)
    version: int = PLAN_VERSION
    deployment: Optional[Dict[str, Any]] = None

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form."""
        data = {"version": self.version, "target": self.target,
                "layers": {path: {"kind": layer.kind, "options": jsonable(layer.options)}
                           for path, layer in self.layers.items()}}
        if self.deployment is not None:
            data["deployment"] = jsonable(self.deployment)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> "Plan":
        """A plan from its JSON form, every field checked (ValueError naming the first bad one)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"plan={type(data).__name__} must be a JSON object")
        version = data.get("version")
        if type(version) is not int or version != PLAN_VERSION:
            raise ValueError(f"plan version={version!r} must be {PLAN_VERSION}")
        target, layers = data.get("target"), data.get("layers")
        if not isinstance(target, str):
            raise ValueError(f"plan target={target!r} must be a kind name or {AUTO!r}")
        if target != AUTO:
            get_kind(target)  # ValueError listing the kinds when unknown
        if not isinstance(layers, Mapping):
            raise ValueError(f"plan layers={type(layers).__name__} must map module paths to layer entries")
        _check_not_nested(list(layers))
        return cls(target, {_check_path(path): _layer_from_dict(path, entry) for path, entry in layers.items()},
                   deployment=_deployment_from_dict(data.get("deployment")))

    def save(self, path: Union[str, Path]) -> None:
        """Write the JSON form atomically."""
        write_atomic(Path(path), json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Plan":
        try:
            data = json.loads(Path(path).read_text())
        except (ValueError, RecursionError) as error:
            raise ValueError(f"plan file {str(path)!r} is not JSON: {error}") from None
        return cls.from_dict(data)

    def apply(self, model: nn.Module, inplace: bool = False) -> nn.Module:
        """``model`` (a copy unless ``inplace``) with each planned conv replaced by its kind,
        freshly initialized: load the converted model's ``state_dict`` into it."""
        for path, layer in self.layers.items():  # every layer checked before the model is touched
            _planned_conv(model, path, layer)
        model = model if inplace else copy.deepcopy(model)
        for path, layer in self.layers.items():
            set_module(model, path, build_module(model.get_submodule(path), layer.kind, layer.options))
        return model


PlanLike = Union[Plan, Mapping[str, Any], str, Path]


def _planned_conv(model: nn.Module, path: str, layer: LayerPlan) -> nn.Conv2d:
    """The conv at ``path``, after checking that the plan's kind and options describe a conversion
    of it: no larger than the kind's exact form (or the conv itself), computed from the registry's
    stages before anything is allocated."""
    try:
        conv = model.get_submodule(path)
    except AttributeError:
        raise ValueError(f"plan layer {path!r} is not a module of this model") from None
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"plan layer {path!r} is a {type(conv).__name__}, expected the original nn.Conv2d")
    kind = get_kind(layer.kind)
    planned = kind.params(conv_spec(conv, **layer.options))  # the kind's rules check each option
    variant = {name: layer.options[name] for name in kind.conversion.variants if name in layer.options}  # type: ignore[union-attr]
    exact = kind.conversion_options(conv_spec(conv), None, variant)
    bound = max(kind.params(conv_spec(conv, **exact)), sum(p.numel() for p in conv.parameters()))
    if planned > bound:
        raise ValueError(f"plan layer {path!r}: {layer.kind} with {layer.options} has {planned:,} parameters, more "
                         f"than its exact form ({bound:,}): not a conversion of this {tuple(conv.weight.shape)} conv")
    return conv


def _deployment_from_dict(entry: Any) -> Optional[Dict[str, Any]]:
    """The deployment a mix was chosen for: known fields only, each of its type (input_size: ints)."""
    if entry is None:
        return None
    if not isinstance(entry, Mapping):
        raise ValueError(f"plan deployment={entry!r} must be an object")
    for name, value in entry.items():
        wanted = _DEPLOYMENT_FIELDS.get(name)
        if wanted is None:
            raise ValueError(f"plan deployment has no field {name!r} (fields: {sorted(_DEPLOYMENT_FIELDS)})")
        if not isinstance(value, wanted) or isinstance(value, bool) or (
                wanted is list and not all(type(v) is int and v > 0 for v in value)):
            raise ValueError(f"plan deployment {name}={value!r} must be a {wanted.__name__}"
                             + (" of positive ints" if wanted is list else ""))
    return {name: tuple(value) if isinstance(value, list) else value for name, value in entry.items()}


def _check_not_nested(paths: List[Any]) -> None:
    """A planned layer replaces a conv; a path inside another planned layer is not one."""
    for path in paths:
        for other in paths:
            if isinstance(path, str) and isinstance(other, str) and path.startswith(f"{other}."):
                raise ValueError(f"plan layer {path!r} lies inside plan layer {other!r}")


def _check_path(path: Any) -> str:
    if not isinstance(path, str) or not path or not all(part.isidentifier() or part.isdigit() for part in path.split(".")):
        raise ValueError(f"plan layer path={path!r} must be a module path (names and indices joined by '.')")
    return path


def _layer_from_dict(path: str, entry: Any) -> LayerPlan:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("kind"), str):
        raise ValueError(f"plan layer {path!r} must be an object with a 'kind' name and 'options'")
    kind = get_kind(entry["kind"])  # ValueError listing the kinds when unknown
    if kind.conversion is None:
        raise ValueError(f"plan layer {path!r}: kind={kind.name!r} is not a conversion target "
                         f"(one of {convertible_kinds()})")
    options = entry.get("options", {})
    if not isinstance(options, Mapping):
        raise ValueError(f"plan layer {path!r}: options={options!r} must be an object")
    unknown = sorted(set(options) - set(kind.options))
    if unknown:
        raise ValueError(f"plan layer {path!r}: kind={kind.name!r} has no option {unknown[0]!r}")
    return LayerPlan(kind.name, {name: _option_value(path, name, value) for name, value in options.items()})


def _option_value(path: str, name: str, value: Any) -> Any:
    """A JSON scalar, or a list of them as a tuple (what the kinds' options take)."""
    if isinstance(value, list) and all(isinstance(v, _JSON_SCALARS) for v in value):
        return tuple(value)
    if isinstance(value, _JSON_SCALARS):
        return value
    raise ValueError(f"plan layer {path!r}: option {name}={value!r} must be a number, string, bool, null or a list of them")


def as_plan(plan: PlanLike) -> Plan:
    """A :class:`Plan` from a plan, its JSON form, or a plan file."""
    if isinstance(plan, Plan):
        return plan
    if isinstance(plan, (str, Path)):
        return Plan.load(plan)
    return Plan.from_dict(plan)


def apply_plan(model: nn.Module, plan: PlanLike, inplace: bool = False) -> nn.Module:
    """Rebuild a converted architecture on a freshly constructed ``model`` so a saved
    ``state_dict`` of the converted model loads into it (see :meth:`Plan.apply`)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model is a {type(model).__name__}; apply_plan takes a freshly built torch.nn.Module")
    return as_plan(plan).apply(model, inplace=inplace)


def save_plan(plan: PlanLike, path: Union[str, Path]) -> None:
    """Write ``plan`` (a :class:`Plan` or its JSON form) to ``path`` as JSON, atomically."""
    as_plan(plan).save(path)


__all__ = ["AUTO", "PLAN_VERSION", "LayerPlan", "Plan", "PlanLike", "apply_plan", "as_plan", "save_plan"]
