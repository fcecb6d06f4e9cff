"""The toolkit's advice read from its log, the retry loop's bookkeeping, input-shape plans and pass-through keys."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from rknn_dropbox.options import OptionsError, parse_convert_options
from rknn_dropbox.convert.rulefix import LogWindow, RuleCrash, advised_rules, build_with_advice, rule_exception
from rknn_dropbox.toolkit_keys import toolkit_config_kwargs
from rknn_dropbox.convert.toolkit_log import explain_toolkit_error
from rknn_dropbox.formats.graphtraits import GraphInput, data_dependent_nodes, graph_inputs
from rknn_dropbox.formats.onnx_shapes import ShapeError, plan_input_shapes

# what rknn-toolkit2 2.5.0 logs when building a stock yolov8n.onnx (colour codes as in the raw log)
CRASH_LOG = """\x1b[1;33mW\x1b[0m \x1b[1;33mYou can add disable_rules=['seperate_conv_rs_split'] in rknn.config() to \
temporarily disable the error rule!\x1b[0m
\x1b[1;31mE\x1b[0m \x1b[1;31mbuild: Traceback (most recent call last):
  File "rknn/api/rknn_log.py", line 344, in rknn.api.rknn_log.error_catch_decorator.error_catch_wrapper
  File "rknn/api/rknn_base.py", line 2083, in rknn.api.rknn_base.RKNNBase.build
  File "rknn/api/graph_optimizer.py", line 2221, in rknn.api.graph_optimizer.GraphOptimizer.fuse_ops
  File "rknn/api/rules/conv.py", line 4860, in rknn.api.rules.conv._p_seperate_conv_rs_split
IndexError: list index out of range
"""
SECOND_CRASH = CRASH_LOG.replace("seperate_conv_rs_split", "fuse_exmatmul_add_mul_exsoftmax13_exmatmul_to_sdpa") \
    .replace("rules/conv.py", "rules/matmul.py").replace("rules.conv.", "rules.matmul.")


class BuildFailed(Exception):
    pass


def _scripted(log: Path, logs: list[str]):
    """An attempt that appends the next scripted log text and fails, until the script runs out."""
    calls: list[list[str]] = []

    def attempt(rules: list[str]) -> str:
        calls.append(rules)
        if len(calls) <= len(logs):
            with open(log, "a") as fh:
                fh.write(logs[len(calls) - 1])
            raise BuildFailed("building failed")
        return "built"
    return attempt, calls


def test_advice_and_the_crashing_rules_exception_are_read_from_the_log() -> None:
    assert advised_rules(CRASH_LOG) == ["seperate_conv_rs_split"]
    assert rule_exception(re.sub(r"\x1b\[[0-9;]*m", "", CRASH_LOG)) == "IndexError: list index out of range"
    assert advised_rules("E build: Not support op Foo") == []


def test_rules_accumulate_over_rounds_and_the_workaround_says_why(tmp_path: Path) -> None:
    log = tmp_path / "raw.log"
    attempt, calls = _scripted(log, [CRASH_LOG, SECOND_CRASH])
    out = build_with_advice(attempt, LogWindow(log), ["user_rule"], BuildFailed, "2.5.0", say=lambda s: None)
    assert out.value == "built"
    assert calls == [["user_rule"], ["user_rule", "seperate_conv_rs_split"],
                     ["user_rule", "seperate_conv_rs_split", "fuse_exmatmul_add_mul_exsoftmax13_exmatmul_to_sdpa"]]
    assert out.workaround is not None
    assert out.workaround.disable_rules == ["seperate_conv_rs_split",
                                            "fuse_exmatmul_add_mul_exsoftmax13_exmatmul_to_sdpa"]
    assert "seperate_conv_rs_split" in out.workaround.reason and "IndexError" in out.workaround.reason


def test_a_rule_that_keeps_crashing_is_named_after_the_bounded_rounds(tmp_path: Path) -> None:
    log = tmp_path / "raw.log"
    same_again = [CRASH_LOG, SECOND_CRASH, CRASH_LOG.replace("seperate_conv_rs_split", "r3"),
                  CRASH_LOG.replace("seperate_conv_rs_split", "r4"), CRASH_LOG.replace("seperate_conv_rs_split", "r5")]
    attempt, calls = _scripted(log, same_again)
    with pytest.raises(RuleCrash) as info:
        build_with_advice(attempt, LogWindow(log), None, BuildFailed, "2.5.0", max_rounds=3, say=lambda s: None)
    assert len(calls) == 4 and info.value.rule == "r4" and info.value.where == "rules/conv.py"
    assert info.value.tried == ["seperate_conv_rs_split", "fuse_exmatmul_add_mul_exsoftmax13_exmatmul_to_sdpa", "r3"]


def test_a_failure_without_advice_is_raised_unchanged(tmp_path: Path) -> None:
    log = tmp_path / "raw.log"
    attempt, calls = _scripted(log, ["E build: Not support op Foo\n"])
    with pytest.raises(BuildFailed):
        build_with_advice(attempt, LogWindow(log), None, BuildFailed, "2.5.0", say=lambda s: None)
    assert len(calls) == 1


@pytest.mark.parametrize("dims, sizes, dynamic, expect", [
    ([1, 3, 224, 224], None, None, (None, [[1, 3, 224, 224]], 0)),
    (["batch", 3, 224, 224], None, None, ([[1, 3, 224, 224]], [[1, 3, 224, 224]], 1)),
    (["batch", 3, 224, 224], [[2, 3, 224, 224]], None, ([[2, 3, 224, 224]], [[2, 3, 224, 224]], 0)),
])
def test_shape_plans(dims: list, sizes: list | None, dynamic: list | None, expect: tuple) -> None:
    plan = plan_input_shapes([GraphInput("images", dims)], sizes, dynamic)
    assert (plan.input_size_list, plan.verify_shapes[0], len(plan.warnings)) == expect
    if plan.input_size_list:
        assert plan.inputs == ["images"]  # load_onnx refuses input_size_list without the names


def test_symbolic_spatial_dims_need_shapes_and_dynamic_input_is_verified_per_set() -> None:
    inputs = [GraphInput("images", ["batch", 3, "height", "width"])]
    with pytest.raises(ShapeError) as info:
        plan_input_shapes(inputs, None, None)
    assert "images [batch, 3, height, width]" in info.value.error and "height, width" in info.value.error
    assert "input_size_list: [[1, 3, 640, 640]]" in info.value.hint
    sets = [[[1, 3, 320, 320]], [[1, 3, 640, 640]]]
    plan = plan_input_shapes(inputs, None, sets)
    assert plan.dynamic_input == sets and plan.verify_shapes == sets and plan.input_size_list is None
    with pytest.raises(ShapeError, match="does not fit input"):
        plan_input_shapes(inputs, None, [[[1, 4, 320, 320]]])


def test_toolkit_keys_pass_through_typed_and_custom_string_is_appended() -> None:
    opts = parse_convert_options({"disable_rules": "seperate_conv_rs_split", "remove_reshape": True,
                                  "op_target": {"Conv_3": "CPU"}, "custom_string": "camera-7",
                                  "dynamic_input": [[1, 3, 320, 320], [1, 3, 640, 640]]}, "m.yaml")
    kwargs = toolkit_config_kwargs(opts, "rknn-dropbox job 5", ["seperate_conv_rs_split", "r2"])
    assert kwargs == {"disable_rules": ["seperate_conv_rs_split", "r2"], "remove_reshape": True,
                      "op_target": {"Conv_3": "cpu"}, "custom_string": "rknn-dropbox job 5; camera-7",
                      "dynamic_input": [[[1, 3, 320, 320]], [[1, 3, 640, 640]]]}


@pytest.mark.parametrize("raw, needle", [
    ({"disable_rules": [3]}, "disable_rules: expected a list of toolkit rule names"),
    ({"model_pruning": "yes"}, "model_pruning: expected true or false"),
    ({"quantized_hybrid_level": -1}, "quantized_hybrid_level: expected a whole number"),
    ({"float_dtype": "int8"}, "float_dtype: 'int8' is not one of: float16"),
    ({"dynamic_input": [[[1, 3, 2]], [[1, 3, 2], [1]]]}, "one shape per input"),
    ({"op_target": ["cpu"]}, "op_target: expected a mapping"),
    ({"enable_flash_attenton": True}, "unknown key 'enable_flash_attenton'"),
])
def test_bad_toolkit_keys_name_the_key(raw: dict, needle: str) -> None:
    with pytest.raises(OptionsError, match=needle):
        parse_convert_options(raw, "m.yaml")


def _graph(nodes: list, initializers: list | None = None) -> Any:
    from onnx import TensorProto, helper
    return helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, None)], initializer=initializers or []))


def test_only_value_dependent_nonzero_and_nms_count_as_data_dependent() -> None:
    import numpy as np
    from onnx import helper, numpy_helper
    on_data = _graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("NonZero", ["r"], ["y"], name="nz")])
    assert data_dependent_nodes(on_data) == ["NonZero 'nz'"]
    on_shape = _graph([helper.make_node("Shape", ["x"], ["s"]), helper.make_node("NonZero", ["s"], ["y"])])
    assert data_dependent_nodes(on_shape) == []
    on_constant = _graph([helper.make_node("NonZero", ["c"], ["y"])], [numpy_helper.from_array(np.ones(3), "c")])
    assert data_dependent_nodes(on_constant) == []
    assert graph_inputs(on_data)[0].describe() == "x [batch, 3, 8, 8]"


@pytest.mark.parametrize("logged, needle", [
    ("ValueError: The input 0 of NonZero('/detector/NonZero') need to be constant! It will cause the graph to be a "
     "dynamic graph!", "from its data (NMS / TopK / NonZero), which the NPU cannot run: NonZero '/detector/NonZero'"),
    ("E build: Reshape node /Reshape_3: Input shape:{1,3103,1,4}, requested shape:{1,3084,1,4}",
     "computes an output shape from its data"),
    ("numpy.core._exceptions._ArrayMemoryError: Unable to allocate 9.00 GiB for an array", "ran out of memory"),
])
def test_toolkit_failures_for_models_people_bring_are_sentences(logged: str, needle: str) -> None:
    error, hint = explain_toolkit_error(logged)
    assert needle in error and hint


def test_a_workaround_build_that_fails_verification_is_not_delivered_and_both_stories_are_told(tmp_path: Path) -> None:
    from rknn_dropbox.convert.rulefix import Workaround
    from rknn_dropbox.convert.target import _refuse_unproven
    from rknn_dropbox.convert.toolkit_log import ConversionError
    built = tmp_path / "m.rknn"
    built.write_bytes(b"rknn")
    workaround = Workaround(["seperate_conv_rs_split"], "rule seperate_conv_rs_split crashed with IndexError")
    _refuse_unproven(workaround, {"status": "passed"}, built)
    assert built.exists()
    with pytest.raises(ConversionError) as info:
        _refuse_unproven(workaround, {"status": "below_threshold", "min_cosine": 0.999,
                                      "verdict": {"summary": "detections agree 2/10", "passed": False},
                                      "outputs": [{"name": "output0", "cosine": 0.42}]}, built)
    assert "rule seperate_conv_rs_split crashed" in info.value.error
    assert "fails its task check against the source model (detections agree 2/10)" in info.value.error
    assert not built.exists()
