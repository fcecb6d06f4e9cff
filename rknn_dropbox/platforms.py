"""What rknn-toolkit2 2.5.0 accepts: target platforms, quantization options and their platform rules."""

from __future__ import annotations

PLATFORMS: tuple[str, ...] = (
    "rk3588", "rk3576", "rk3568", "rk3566", "rk3562",
    "rv1103", "rv1103b", "rv1106", "rv1106b", "rv1126b", "rk2118",
)
# Platforms whose NPU has no fp16 path: a float build is refused by the toolkit.
NO_FP16_PLATFORMS: frozenset[str] = frozenset({"rv1103", "rv1103b", "rv1106", "rv1106b"})

# Measured with rknn-toolkit2 2.5.0 (config + build of a Conv+Relu ONNX on every platform):
#  * config() accepts only w8a8, w8a16, w16a16i_dfp, w4a16 ("Invalid quantized_dtype 'w16a16i'" everywhere);
#  * w8a16 passes config() only on rk3562, w4a16 only on rk3576 and rv1126b ("... not support in 'rk3588'!");
#  * w16a16i_dfp builds on rk3588/3576/3568/3566/rv1103/rv1106/rv1126b, but on the "mini rknn" platforms
#    rv1103b/rv1106b the native compiler aborts the process ("Meet unsupported conv ... input type 5").
QUANTIZED_DTYPES: tuple[str, ...] = ("w8a8", "w8a16", "w16a16i_dfp", "w4a16")
# dtypes the toolkit's documentation names but 2.5.0 refuses -> what to use instead
RENAMED_DTYPES: dict[str, str] = {"w16a16i": "w16a16i_dfp", "asymmetric_quantized-8": "w8a8",
                                  "asymmetric_quantized-u8": "w8a8"}
# dtype -> the platforms that support it (w8a8 everywhere).
DTYPE_PLATFORMS: dict[str, frozenset[str]] = {
    "w8a8": frozenset(PLATFORMS),
    "w8a16": frozenset({"rk3562"}),
    "w16a16i_dfp": frozenset(PLATFORMS) - {"rv1103b", "rv1106b"},
    "w4a16": frozenset({"rk3576", "rv1126b"}),
}
QUANTIZED_ALGORITHMS: tuple[str, ...] = ("normal", "mmse", "kl_divergence", "gdq")
QUANTIZED_METHODS: tuple[str, ...] = ("layer", "channel", "group32", "group64", "group128")
OPTIMIZATION_LEVELS: tuple[int, ...] = (0, 1, 2, 3)


def dtype_platform_error(dtype: str, platform: str) -> str | None:
    """The reason `dtype` cannot be built for `platform`, or None when the pair is allowed."""
    allowed = DTYPE_PLATFORMS.get(dtype)
    if allowed is None or platform in allowed:
        return None
    return f"quantized_dtype {dtype} is not supported on {platform} (only on {', '.join(sorted(allowed))})"
