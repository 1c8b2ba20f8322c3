"""pop_node's MLLM input settings (mllm_max_pixels, system_prompt) with real rclpy, tiny preset."""

from rclpy.parameter import Parameter as RclpyParameter

from pop_ros.ros.parameters import check_parameter


def test_mllm_input_parameters_reach_the_model(inprocess):
    _, default, _ = inprocess("mllm_default", activate=False)
    assert default.pointer.mllm.max_pixels == 0 and default.pointer.mllm.system_prompt == ""  # tiny preset's
    _, node, _ = inprocess("mllm_capped", "mllm_max_pixels:=12544", "system_prompt:=internvl-original", activate=False)
    assert node.pointer.model_config.mllm_max_pixels == 12544
    assert node.pointer.mllm.max_pixels == 12544
    assert node.pointer.mllm.system_prompt.startswith("你是书生·万象")
    assert node.pointer.mllm.prompt("handle").startswith("<|im_start|>system\n你是书生·万象")
    # Read at configure: refused while configured, with the reason.
    result = node.set_parameters([RclpyParameter("mllm_max_pixels", value=100)])[0]
    assert not result.successful and "read at configure" in result.reason


def test_mllm_max_pixels_is_validated():
    assert check_parameter("mllm_max_pixels", -1) is None and check_parameter("mllm_max_pixels", 0) is None
    assert "mllm_max_pixels must be >= -1" in check_parameter("mllm_max_pixels", -2)
