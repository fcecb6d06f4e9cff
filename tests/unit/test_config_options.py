"""Config TOML and sidecar validation: bad values name the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from rknn_dropbox.config import ConfigError, load_config
from rknn_dropbox.options import (
    ConvertOptions, OptionsError, effective_quantization, parse_convert_options, read_yaml_mapping,
)

REPO = Path(__file__).resolve().parents[2]


def test_example_config_loads_with_documented_defaults() -> None:
    cfg = load_config(REPO / "config.example.toml")
    assert cfg.inbox == REPO / "inbox" and cfg.workers == 2 and cfg.stable_seconds == 3.0
    assert cfg.max_file_size == 500 * 1024 * 1024
    assert cfg.convert.target_platform == ("rk3588",) and cfg.convert.do_quantization == "auto"
    assert cfg.http.host == "127.0.0.1" and cfg.http.port == 8080


@pytest.mark.parametrize("text, needle", [
    ("wrkers = 2", "unknown key 'wrkers'"),
    ("workers = -1", "workers: must be at least 1"),
    ("workers = true", "workers: expected a number"),
    ("[convert]\ntarget_platform = \"rk9999\"", "target_platform: 'rk9999' is not one of"),
    ("[http]\nport = 70000", "http.port"),
    ("poll = \"sometimes\"", "poll:"),
    ("this is not toml", "not valid TOML"),
])
def test_bad_config_names_the_key(tmp_path: Path, text: str, needle: str) -> None:
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=None) as exc:
        load_config(p)
    assert needle in str(exc.value)


def test_cli_overrides_win(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("workers = 3\n")
    cfg = load_config(p, {"workers": 1, "port": 9999, "inbox": str(tmp_path / "in"), "outbox": None})
    assert cfg.workers == 1 and cfg.http.port == 9999 and cfg.inbox == tmp_path / "in"
    assert cfg.outbox == tmp_path / "outbox"


def test_sidecar_values_are_checked() -> None:
    base = ConvertOptions()
    opts = parse_convert_options({"target_platform": ["RK3566", "rv1106"], "mean_values": [0, 0, 0],
                                  "input_size_list": [[1, 3, 8, 8]]}, "s.yaml", base)
    assert opts.target_platform == ("rk3566", "rv1106") and opts.mean_values == [[0.0, 0.0, 0.0]]
    with pytest.raises(OptionsError, match="s.yaml: unknown key 'colour'"):
        parse_convert_options({"colour": 1}, "s.yaml", base)
    with pytest.raises(OptionsError, match="do_quantization: 'maybe' is not one of: true, false, auto"):
        parse_convert_options({"do_quantization": "maybe"}, "s.yaml", base)
    with pytest.raises(OptionsError, match="w8a16 is not supported on rk3588"):
        parse_convert_options({"quantized_dtype": "w8a16"}, "s.yaml", base)
    with pytest.raises(OptionsError, match="expected whole numbers"):
        parse_convert_options({"input_size_list": [[1, 3.5]]}, "s.yaml", base)


@pytest.mark.parametrize("text, needle", [
    ("- a\n- b\n", "expected a mapping"),
    ("a: 1\na: 2\n", "duplicate key 'a'"),
    ("a: &x [1]\nb: *x\n", "aliases"),
    ("a:\n\tb: 1\n", "not valid YAML"),
    ("!!python/object:os.system x", "not valid YAML"),
])
def test_strict_yaml(tmp_path: Path, text: str, needle: str) -> None:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    with pytest.raises(OptionsError) as exc:
        read_yaml_mapping(p)
    assert needle in str(exc.value)


def test_huge_sidecar_refused_before_parsing(tmp_path: Path) -> None:
    p = tmp_path / "s.yaml"
    p.write_bytes(b"a: " + b"x" * (2 * 1024 * 1024))
    with pytest.raises(OptionsError, match="too large"):
        read_yaml_mapping(p)


def test_quantization_auto() -> None:
    assert effective_quantization(ConvertOptions(), True, False)[0] is True
    q, why = effective_quantization(ConvertOptions(), False, False)
    assert q is False and "no calibration dataset" in why
    assert effective_quantization(ConvertOptions(do_quantization=True), True, True)[0] is False
    with pytest.raises(OptionsError, match="three|dataset.txt"):
        effective_quantization(ConvertOptions(do_quantization=True), False, False)
