"""What rknn-toolkit2 2.5.0 accepts: target platforms, quantization options and their platform rules."""

from __future__ import annotations

PLATFORMS: tuple[str, ...] = (
    "rk3588", "rk3576", "rk3568", "rk3566", "rk3562",
    "rv1103", "rv1103b", "rv1106", "rv1106b", "rv1126b", "rk2118",
)
# Platforms whose NPU has no fp16 path: a float build is refused by the toolkit.
NO_FP16_PLATFORMS: frozenset[str] = frozenset({"rv1103", "rv1103b", "rv1106", "rv1106b"})

QUANTIZED_DTYPES: tuple[str, ...] = ("w8a8", "w8a16", "w16a16i", "w16a16i_dfp", "w4a16")
# dtype -> the platforms that support it (w8a8 everywhere).
DTYPE_PLATFORMS: dict[str, frozenset[str]] = {
    "w8a8": frozenset(PLATFORMS),
    "w8a16": frozenset({"rk3562"}),
    "w16a16i": frozenset({"rv1103", "rv1103b", "rv1106", "rv1106b"}),
    "w16a16i_dfp": frozenset({"rv1103", "rv1103b", "rv1106", "rv1106b"}),
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
