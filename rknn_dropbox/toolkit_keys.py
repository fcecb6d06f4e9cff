"""The toolkit's own rknn.config() keys a sidecar may pass through: their types, checks, and the config kwargs."""

from __future__ import annotations

import re
from typing import Any

# key -> the default rknn.config() uses (a value equal to it is not passed)
TOOLKIT_KEY_DEFAULTS: dict[str, Any] = {
    "disable_rules": None,
    "dynamic_input": None,
    "op_target": None,
    "quantized_hybrid_level": 0,
    "float_dtype": "float16",
    "model_pruning": False,
    "remove_reshape": False,
    "enable_flash_attention": False,
    "custom_string": None,
}
FLOAT_DTYPES = ("float16",)
MAX_CUSTOM_STRING = 900  # ours (about 40 characters) goes in front; the toolkit keeps 1024
_RULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ToolkitKeyError(ValueError):
    """A pass-through key with a value of the wrong type; the message says what was expected."""


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ToolkitKeyError(f"expected true or false, got {value!r}")
    return value


def _rules(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and _RULE_NAME.match(v) for v in items):
        raise ToolkitKeyError(f"expected a list of toolkit rule names like [seperate_conv_rs_split], got {value!r}")
    return list(dict.fromkeys(items))


def _shape(value: Any) -> list[int]:
    if not isinstance(value, list) or not value or not all(
            isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in value):
        raise ToolkitKeyError(f"expected a shape of positive whole numbers like [1, 3, 224, 224], got {value!r}")
    return list(value)


def _dynamic_input(value: Any) -> list[list[list[int]]]:
    """[[shape of input 0, shape of input 1, ...], ...]: one set per supported size; every set names every input."""
    if not isinstance(value, list) or not value:
        raise ToolkitKeyError("expected a list of shape sets, one shape per input in each, like "
                              f"[[[1, 3, 224, 224]], [[1, 3, 320, 320]]], got {value!r}")
    sets = []
    for item in value:
        if not isinstance(item, list) or not item:
            raise ToolkitKeyError(f"expected a shape set (a list of shapes, one per input), got {item!r}")
        shapes = [_shape(item)] if all(isinstance(x, int) for x in item) else [_shape(s) for s in item]
        sets.append(shapes)
    if len({len(s) for s in sets}) != 1:
        raise ToolkitKeyError("every shape set needs one shape per input: the sets have "
                              f"{sorted({len(s) for s in sets})} shapes")
    return sets


def _op_target(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not value or not all(
            isinstance(k, str) and k and isinstance(v, str) and v for k, v in value.items()):
        raise ToolkitKeyError(f"expected a mapping of op name to target like {{Conv_12: cpu}}, got {value!r}")
    return {k: v.lower() for k, v in value.items()}


def _hybrid_level(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ToolkitKeyError(f"expected a whole number 0 or more, got {value!r}")
    return value


def _float_dtype(value: Any) -> str:
    if value not in FLOAT_DTYPES:
        raise ToolkitKeyError(f"{value!r} is not one of: {', '.join(FLOAT_DTYPES)}")
    return value


def _custom_string(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_CUSTOM_STRING:
        raise ToolkitKeyError(f"expected text of at most {MAX_CUSTOM_STRING} characters, got {value!r:.80}")
    return value


_PARSERS = {
    "disable_rules": _rules,
    "dynamic_input": _dynamic_input,
    "op_target": _op_target,
    "quantized_hybrid_level": _hybrid_level,
    "float_dtype": _float_dtype,
    "model_pruning": _bool,
    "remove_reshape": _bool,
    "enable_flash_attention": _bool,
    "custom_string": _custom_string,
}


def parse_toolkit_key(key: str, value: Any) -> Any:
    """The checked value of one pass-through key (None clears a list/mapping key); ToolkitKeyError if wrong."""
    if value is None and TOOLKIT_KEY_DEFAULTS[key] is None:
        return None
    return _PARSERS[key](value)


def toolkit_config_kwargs(options: Any, our_custom_string: str,
                          disable_rules: list[str] | None = None) -> dict[str, Any]:
    """The pass-through keys that differ from the toolkit's defaults, for rknn.config(**kwargs).

    custom_string is ours with the user's appended; disable_rules (when given) replaces the user's list: the
    retry on the toolkit's advice passes the user's rules plus the ones it added."""
    kwargs: dict[str, Any] = {}
    for key, default in TOOLKIT_KEY_DEFAULTS.items():
        value = getattr(options, key, default)
        if key == "custom_string":
            kwargs[key] = f"{our_custom_string}; {value}" if value else our_custom_string
        elif key == "disable_rules":
            rules = list(dict.fromkeys(value or [] if disable_rules is None else disable_rules))
            if rules:
                kwargs[key] = rules
        elif value != default:
            kwargs[key] = value
    return kwargs
