"""Conversion options: the sidecar YAML / TOML [convert] keys, parsed and validated into ConvertOptions."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Union

import yaml

from rknn_dropbox.callback_urls import public_url, valid_callback_url, valid_host_entry
from rknn_dropbox.toolkit_keys import TOOLKIT_KEY_DEFAULTS, ToolkitKeyError, parse_toolkit_key
from rknn_dropbox.platforms import (
    NO_FP16_PLATFORMS, OPTIMIZATION_LEVELS, PLATFORMS, QUANTIZED_ALGORITHMS, QUANTIZED_DTYPES,
    QUANTIZED_METHODS, RENAMED_DTYPES, dtype_platform_error,
)

MAX_SIDECAR_BYTES = 1024 * 1024
YOLO_LAYOUTS = ("split", "keep", "rknn_model_zoo")  # an Ultralytics head's layouts (convert/yolo/layouts.py)
Quantize = Union[bool, str]  # True / False / "auto"


class OptionsError(ValueError):
    """A bad sidecar or [convert] value; the message names the key and what is allowed."""


@dataclass(frozen=True)
class ConvertOptions:
    target_platform: tuple[str, ...] = ("rk3588",)
    do_quantization: Quantize = "auto"
    dataset: str | None = None
    mean_values: list[list[float]] | None = None
    std_values: list[list[float]] | None = None
    quantized_dtype: str = "w8a8"
    quantized_algorithm: str = "normal"
    quantized_method: str = "channel"
    optimization_level: int = 3
    input_size_list: list[list[int]] | None = None
    inputs: list[str] | None = None
    outputs: list[str] | None = None
    # an Ultralytics YOLO head's outputs: split (the final Concat's parts), keep (as exported) or rknn_model_zoo
    # (the Rockchip model zoo's per-scale layout); None: split for int8 builds, keep for fp16 (convert/yolo/)
    yolo_outputs: str | None = None
    imgsz: list[int] | None = None        # an Ultralytics checkpoint's export size [h, w] (None: its training size)
    quant_img_RGB2BGR: bool = False
    single_core_mode: bool = False
    compress_weight: bool = False
    # after the build, run the toolkit's simulator and compare with the source framework (cosine per output)
    verify: bool = True
    verify_strict: bool = False           # a verification below verify_min_cosine fails the job (else: a warning)
    verify_min_cosine: float | None = None  # None: 0.98 for int8 builds, 0.999 for fp16
    verify_samples: int = 4               # how many real samples verification runs on (at most)
    verify_time_share: float = 0.15       # fewer samples when all of them would take longer than this share of the
    #                                       build (at least one; every sample when verification takes under 5 s)
    verify_dataset: str | None = None     # held-out samples (a dataset.txt) verified on before the calibration set
    verify_thresholds: dict[str, float] | None = None  # per task-check metric (convert/checks/base.py defaults)
    accuracy_repair: str = "auto"         # auto: rebuild an int8 model below the threshold with the toolkit's remedies
    repair_budget_seconds: float | None = None  # None: 3x the first build, at least 60 s
    accuracy_fallback: str = "none"       # fp16: deliver the fp16 build when no int8 candidate passes
    # which rknn-toolkit2 builds the job (toolkits.py): exactly toolkit_version, or the newest installed one whose
    # models the board's librknnrt runtime_version can load; neither: the first of [toolkits] versions
    toolkit_version: str | None = None
    runtime_version: str | None = None
    callback_url: str | None = None  # http(s) URL the daemon POSTs the final task JSON to (see callbacks.py)
    callback_hosts: tuple[str, ...] | None = None  # TOML only: the hosts a sidecar's callback_url may name
    # ---- the toolkit's own rknn.config() keys, passed through (types and checks: toolkit_keys.py) ----
    disable_rules: list[str] | None = None                  # also added to by the retry on the toolkit's advice
    dynamic_input: list[list[list[int]]] | None = None      # shape sets; verification runs at every one
    op_target: dict[str, str] | None = None
    quantized_hybrid_level: int = 0
    float_dtype: str = "float16"
    model_pruning: bool = False
    remove_reshape: bool = False
    enable_flash_attention: bool = False
    custom_string: str | None = None                        # appended to ours ("rknn-dropbox <version> job <id>")
    # ---- end of the toolkit's keys ----

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_platform"] = list(self.target_platform)
        return d

    def to_public_json(self) -> dict[str, Any]:
        """What result.json records: callback_url without credentials or query (it may carry a token)."""
        d = self.to_json()
        d.pop("callback_hosts", None)  # the daemon's, not the job's
        if d.get("callback_url"):
            d["callback_url"] = public_url(d["callback_url"])
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ConvertOptions":
        d = dict(d)
        d["target_platform"] = tuple(d.get("target_platform") or ("rk3588",))
        if d.get("callback_hosts") is not None:
            d["callback_hosts"] = tuple(d["callback_hosts"])
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


ALLOWED_KEYS = tuple(f.name for f in fields(ConvertOptions))
TOML_ONLY_KEYS = ("callback_hosts",)


def option_error(where: str, key: str, msg: str) -> OptionsError:
    return OptionsError(f"{where}: {key}: {msg}")


def _number_lists(where: str, key: str, value: Any, kind: type) -> list[list[Any]]:
    """Accept [a, b, c] (one input) or [[a, b, c], [..]] (one list per input)."""
    if not isinstance(value, list) or not value:
        raise option_error(where, key, f"expected a list of numbers or a list of such lists, got {value!r}")
    rows = value if all(isinstance(v, list) for v in value) else [value]
    out: list[list[Any]] = []
    for row in rows:
        if not row or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in row):
            raise option_error(where, key, f"expected numbers, got {row!r}")
        if kind is int and not all(isinstance(x, int) for x in row):
            raise option_error(where, key, f"expected whole numbers, got {row!r}")
        out.append([kind(x) for x in row])
    return out


def _choice(where: str, key: str, value: Any, allowed: tuple[Any, ...]) -> Any:
    if isinstance(value, bool) or value not in allowed:
        raise option_error(where, key, f"{value!r} is not one of: {', '.join(map(str, allowed))}")
    return value


_NOT_MINE = object()  # a key the topic parser below does not own


def _parse_build_value(where: str, key: str, value: Any) -> Any:
    """Keys of what is built: platforms, quantization, dataset, normalization, shapes, tensors."""
    if key == "target_platform":
        items = value if isinstance(value, list) else [value]
        if not items:
            raise option_error(where, key, "an empty list; name at least one platform")
        out = []
        for item in items:
            item = item.lower() if isinstance(item, str) else item
            out.append(_choice(where, key, item, PLATFORMS))
        return tuple(dict.fromkeys(out))
    if key == "do_quantization":
        if value in (True, False) or value == "auto":
            return value
        raise option_error(where, key, f"{value!r} is not one of: true, false, auto")
    if key == "dataset":
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise option_error(where, key, f"expected a path to a dataset.txt, got {value!r}")
        return value
    if key in ("mean_values", "std_values"):
        return None if value is None else _number_lists(where, key, value, float)
    if key == "input_size_list":
        return None if value is None else _number_lists(where, key, value, int)
    if key == "quantized_dtype":
        if isinstance(value, str) and value in RENAMED_DTYPES:
            raise option_error(where, key, f"{value!r} is refused by rknn-toolkit2 2.5.0; use "
                        f"{RENAMED_DTYPES[value]!r} (allowed: {', '.join(QUANTIZED_DTYPES)})")
        return _choice(where, key, value, QUANTIZED_DTYPES)
    if key == "quantized_algorithm":
        return _choice(where, key, value, QUANTIZED_ALGORITHMS)
    if key == "quantized_method":
        return _choice(where, key, value, QUANTIZED_METHODS)
    if key == "optimization_level":
        return _choice(where, key, value, OPTIMIZATION_LEVELS)
    if key == "yolo_outputs":
        return None if value is None else _choice(where, key, value, YOLO_LAYOUTS)
    if key == "imgsz":
        sizes = value if isinstance(value, list) else [value]
        if value is None:
            return None
        if not 1 <= len(sizes) <= 2 or not all(isinstance(v, int) and not isinstance(v, bool) and 32 <= v <= 4096
                                               and v % 32 == 0 for v in sizes):
            raise option_error(where, key, f"expected a size in pixels (a multiple of 32, e.g. 640) or [height, "
                                           f"width], got {value!r}")
        return [sizes[0], sizes[-1]]
    if key in ("inputs", "outputs"):
        if value is None:
            return None
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(v, str) and v for v in items):
            raise option_error(where, key, f"expected a list of tensor names, got {value!r}")
        return list(items)
    return _NOT_MINE


def _parse_verify_value(where: str, key: str, value: Any) -> Any:
    """Switches, and the keys of verification and accuracy repair."""
    if key in ("quant_img_RGB2BGR", "single_core_mode", "compress_weight", "verify", "verify_strict"):
        if not isinstance(value, bool):
            raise option_error(where, key, f"expected true or false, got {value!r}")
        return value
    if key == "verify_min_cosine":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1.0 <= value <= 1.0:
            raise option_error(where, key, f"expected a number between -1 and 1, got {value!r}")
        return float(value)
    if key == "verify_samples":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 64:
            raise option_error(where, key, f"expected a whole number from 1 to 64, got {value!r}")
        return value
    if key == "verify_time_share":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise option_error(where, key, f"expected a share of the build's time above 0 (1.0: as long as the build), "
                                    f"got {value!r}")
        return float(value)
    if key == "verify_dataset":
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise option_error(where, key, f"expected a path to a dataset.txt of held-out samples, got {value!r}")
        return value
    if key == "verify_thresholds":
        from rknn_dropbox.thresholds import DEFAULT_THRESHOLDS
        if value is None:
            return None
        if not isinstance(value, dict) or not all(k in DEFAULT_THRESHOLDS and isinstance(v, (int, float))
                                                  and not isinstance(v, bool) and v >= 0 for k, v in value.items()):
            raise option_error(where, key, f"expected a mapping of metric: number with metrics from "
                                           f"{', '.join(DEFAULT_THRESHOLDS)}, got {value!r}")
        return {k: float(v) for k, v in value.items()}
    if key == "accuracy_repair":
        return _choice(where, key, value, ("auto", "off"))
    if key == "accuracy_fallback":
        return _choice(where, key, value, ("none", "fp16"))
    if key == "repair_budget_seconds":
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise option_error(where, key, f"expected a number of seconds (0 or more), got {value!r}")
        return None if value is None else float(value)
    return _NOT_MINE


def _parse_passthrough_value(where: str, key: str, value: Any) -> Any:
    """callback_url, the toolkit version keys, and the toolkit's own config() keys."""
    if key == "callback_url":
        if value is not None and not valid_callback_url(value):
            raise option_error(where, key, f"expected an http:// or https:// URL, got {value!r}")
        return value
    if key == "callback_hosts":
        items = value if isinstance(value, list) else [value]
        if value is not None and not all(valid_host_entry(v) for v in items):
            raise option_error(where, key, f"expected a list of host names (\"ci.example.com\", "
                                           f"\".example.com\", \"10.0.0.5:8080\"), got {value!r}")
        return None if value is None else tuple(items)
    if key in ("toolkit_version", "runtime_version"):
        from rknn_dropbox.toolkits import ToolkitError, check_version
        try:
            return None if value is None else check_version(key, value)
        except ToolkitError as exc:
            raise OptionsError(f"{where}: {exc}") from None
    if key in TOOLKIT_KEY_DEFAULTS:  # the toolkit's own config() keys (toolkit_keys.py)
        try:
            return parse_toolkit_key(key, value)
        except ToolkitKeyError as exc:
            raise option_error(where, key, str(exc)) from None
    return _NOT_MINE


def _parse_value(where: str, key: str, value: Any) -> Any:
    for parse in (_parse_build_value, _parse_verify_value, _parse_passthrough_value):
        parsed = parse(where, key, value)
        if parsed is not _NOT_MINE:
            return parsed
    raise option_error(where, key, f"unknown key (allowed: {', '.join(ALLOWED_KEYS)})")  # pragma: no cover


def parse_convert_options(raw: Any, where: str, base: ConvertOptions | None = None,
                          base_dir: Path | None = None) -> ConvertOptions:
    """Overlay the mapping `raw` on `base`. `base_dir` is given for the daemon's TOML only: it makes a relative
    dataset absolute, and only there may TOML-only keys (callback_hosts) be set."""
    if not isinstance(raw, dict):
        raise OptionsError(f"{where}: expected a mapping of option: value, got {type(raw).__name__}")
    allowed = set(ALLOWED_KEYS)
    changes: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or key not in allowed:
            raise OptionsError(f"{where}: unknown key {key!r} (allowed: {', '.join(ALLOWED_KEYS)})")
        if key in TOML_ONLY_KEYS and base_dir is None:
            raise option_error(where, key, "can only be set in the daemon's TOML [convert], not in a bundle")
        changes[key] = _parse_value(where, key, value)
    for path_key in ("dataset", "verify_dataset"):
        if base_dir is not None and changes.get(path_key) and not os.path.isabs(changes[path_key]):
            changes[path_key] = str(base_dir / changes[path_key])
    opts = replace(base or ConvertOptions(), **changes)
    if opts.do_quantization is not False and (opts.do_quantization is True or "quantized_dtype" in changes):
        # one target: refuse now; several: refuse only when none can take the dtype (the rest fail per target)
        reasons = [dtype_platform_error(opts.quantized_dtype, p) for p in opts.target_platform]
        if all(reasons):
            raise OptionsError(f"{where}: {'; '.join(r for r in reasons if r)}")
    return opts


class _StrictLoader(yaml.SafeLoader):
    """safe_load without aliases (billion laughs) and without duplicate keys."""

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(None, None, "YAML aliases (*name) are not allowed",
                                                    event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:  # type: ignore[override]
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            try:
                seen.add(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(None, None, "a key that is not a plain value",
                                                        key_node.start_mark) from None
        return super().construct_mapping(node, deep=deep)


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Parse a sidecar file strictly; OptionsError names the file and what is wrong."""
    name = path.name
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise OptionsError(f"{name}: cannot read: {exc.strerror}") from None
    if size > MAX_SIDECAR_BYTES:
        raise OptionsError(f"{name}: {size} bytes is too large for a sidecar (limit {MAX_SIDECAR_BYTES} bytes)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise OptionsError(f"{name}: not UTF-8 text") from None
    except OSError as exc:
        raise OptionsError(f"{name}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise OptionsError(f"{name}: not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:  # `a: [[[[...` thousands deep
        raise OptionsError(f"{name}: not valid YAML: nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise OptionsError(f"{name}: expected a mapping (key: value lines), got a {type(data).__name__}")
    return data


def effective_quantization(opts: ConvertOptions, has_dataset: bool, prequantized: bool) -> tuple[bool, str]:
    """Decide do_quantization for the build and say why, in words for result.json and the log."""
    if prequantized:
        return False, "the model is already quantized; built with do_quantization=False"
    if opts.do_quantization is True:
        if not has_dataset:
            raise OptionsError(
                "do_quantization is true but no calibration dataset was given: add `dataset: dataset.txt` to the "
                "sidecar, put a dataset.txt or calibration images in the model's folder, or set [convert] dataset "
                "in the TOML")
        return True, f"int8 ({opts.quantized_dtype}) with the calibration dataset"
    if opts.do_quantization is False:
        return False, "fp16 build (do_quantization: false)"
    if has_dataset:
        return True, f"int8 ({opts.quantized_dtype}): a calibration dataset was found"
    return False, "fp16 build: no calibration dataset was found (give one for an int8 model)"


def check_fp16_platforms(opts: ConvertOptions, quantize: bool) -> None:
    if quantize:
        return
    bad = [p for p in opts.target_platform if p in NO_FP16_PLATFORMS]
    if bad:
        raise OptionsError(
            f"{', '.join(bad)} cannot run fp16 models and no calibration dataset was found: give a dataset "
            "(sidecar `dataset:`, a dataset.txt or images in the folder) for an int8 build")
