"""The toolkit's own `python -m rknn.api.rknn_convert` model_config.yml (rknn_model_zoo's), read as a sidecar:
its keys translated into this project's options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rknn_dropbox.options import OptionsError, option_error

MODEL_CONFIG_KEYS = ("name", "platform", "model_file_path", "pt_file_path", "prototxt_file_path",
                     "caffemodel_file_path", "darknet_cfg_path", "darknet_weights_path", "quantize", "dataset",
                     "configs", "subgraphs", "toolkit_version", "runtime_version")
MODEL_CONFIG_CONFIGS = ("quantized_dtype", "mean_values", "std_values", "channel_mean_value", "quant_img_RGB2BGR",
                        "quantized_algorithm", "quantized_method", "optimization_level", "target_platform",
                        "single_core_mode", "compress_weight")
# the toolkit's model_config `platform:` -> our format names
MODEL_CONFIG_PLATFORMS = {"onnx": "onnx", "tflite": "tflite", "caffe": "caffe", "darknet": "darknet",
                          "tensorflow": "tensorflow", "pytorch": "pytorch"}


@dataclass(frozen=True)
class ModelConfigRefs:
    """What a model_config.yml says about the model itself: its format and files (paths relative to the yml)."""
    platform: str | None = None
    files: tuple[str, ...] = ()


def is_model_config(raw: Any) -> bool:
    """A sidecar written for rknn_convert: a `models:` mapping, or its keys at the top level."""
    if not isinstance(raw, dict):
        return False
    if set(raw) == {"models"} and isinstance(raw["models"], dict):
        return True
    return bool(set(raw) & {"platform", "model_file_path", "prototxt_file_path", "darknet_cfg_path", "configs",
                            "subgraphs", "quantize", "pt_file_path"})


def _str_bool(where: str, key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise option_error(where, key, f"expected true or false, got {value!r}")


def _size_list(where: str, value: Any) -> list[list[int]]:
    """rknn_convert's input_size_list: ["1,3,224,224", ...] (a 3-dim entry gets a batch of 1) or lists of ints."""
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, str):
            try:
                dims = [int(x) for x in item.replace(" ", "").split(",") if x]
            except ValueError:
                raise option_error(where, "subgraphs.input_size_list",
                                   f"expected \"1,3,224,224\", got {item!r}") from None
        elif isinstance(item, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in item):
            dims = list(item)
        else:
            raise option_error(where, "subgraphs.input_size_list", f"expected \"1,3,224,224\", got {item!r}")
        if len(dims) == 3:
            dims.insert(0, 1)
        out.append(dims)
    return out


def model_config_to_options(raw: dict[str, Any], where: str) -> tuple[dict[str, Any], ModelConfigRefs]:
    """Normalise a model_config.yml mapping into native sidecar keys (+ the model's format and files)."""
    model = raw["models"] if set(raw) == {"models"} else raw
    if not isinstance(model, dict):
        raise OptionsError(f"{where}: models: expected a mapping")
    native: dict[str, Any] = {}
    for key in model:
        if key not in MODEL_CONFIG_KEYS:
            raise OptionsError(f"{where}: unknown model_config key {key!r} (allowed: {', '.join(MODEL_CONFIG_KEYS)})")
    platform = model.get("platform")
    if platform is not None and platform not in MODEL_CONFIG_PLATFORMS:
        raise option_error(where, "platform", f"{platform!r} is not one of: {', '.join(MODEL_CONFIG_PLATFORMS)}")
    files = tuple(str(model[k]) for k in ("model_file_path", "pt_file_path", "prototxt_file_path",
                                          "caffemodel_file_path", "darknet_cfg_path", "darknet_weights_path")
                  if model.get(k))
    if "quantize" in model:
        native["do_quantization"] = _str_bool(where, "quantize", model["quantize"])
    if model.get("dataset"):
        native["dataset"] = model["dataset"]
    for key in ("toolkit_version", "runtime_version"):  # no such key in rknn_convert: ours, beside quantize
        if model.get(key) is not None:
            native[key] = model[key]
    configs = model.get("configs") or {}
    if not isinstance(configs, dict):
        raise OptionsError(f"{where}: configs: expected a mapping")
    for key, value in configs.items():
        if key not in MODEL_CONFIG_CONFIGS:
            raise OptionsError(f"{where}: configs: unknown key {key!r} (allowed: {', '.join(MODEL_CONFIG_CONFIGS)})")
        if key == "quantized_dtype" and value in ("asymmetric_quantized-8", "asymmetric_quantized-u8"):
            value = "w8a8"  # the toolkit 1 name rknn_model_zoo configs still use
        if key == "channel_mean_value":  # "m0 m1 m2 scale", the toolkit-1 spelling of mean/std
            try:
                nums = [float(x) for x in str(value).split()]
            except ValueError:
                raise option_error(where, "configs.channel_mean_value",
                                   f"expected \"0 0 0 255\", got {value!r}") from None
            if len(nums) < 2:
                raise option_error(where, "configs.channel_mean_value", f"expected \"0 0 0 255\", got {value!r}")
            native.setdefault("mean_values", nums[:-1])
            native.setdefault("std_values", [nums[-1]] * (len(nums) - 1))
            continue
        if key in ("quant_img_RGB2BGR", "single_core_mode", "compress_weight"):
            value = _str_bool(where, f"configs.{key}", value)
        native[key] = value
    subgraphs = model.get("subgraphs") or {}
    if not isinstance(subgraphs, dict):
        raise OptionsError(f"{where}: subgraphs: expected a mapping")
    for key, value in subgraphs.items():
        if key in ("input_size_list", "input-size-list"):
            native["input_size_list"] = _size_list(where, value)
        elif key in ("inputs", "outputs"):
            native[key] = value
        else:
            raise OptionsError(f"{where}: subgraphs: unknown key {key!r} (allowed: input_size_list, inputs, outputs)")
    return native, ModelConfigRefs(MODEL_CONFIG_PLATFORMS.get(platform) if platform else None, files)
