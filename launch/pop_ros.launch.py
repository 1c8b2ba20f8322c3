"""Launch pop_node beside a camera driver.

    # realsense-ros 4.x: ros2 launch realsense2_camera rs_launch.py align_depth.enable:=true
    ros2 launch pop_ros pop_ros.launch.py \
        support_library:=$(ros2 pkg prefix pop_ros)/share/pop_ros/config/supports/library.yaml
    ros2 launch pop_ros pop_ros.launch.py namespace:=left_arm camera:=/left/color \
        depth:=/left/aligned_depth/image_raw image_transport:=compressed params_file:=/path/to/my_params.yaml

Arguments: `params_file` (the node's parameters; default the shipped config/pop_ros.yaml);
`preset`, `image_transport` (raw | compressed), `image_is_rectified` (true | false) and
`support_library` override the params file ONLY when given; `namespace` (of the node: its topics are
/<namespace>/pop_node/...); `camera` (the colour camera's namespace: <camera>/image_raw and
<camera>/camera_info; compressed frames come from <camera>/image_raw/compressed); `depth` (the depth
image aligned to the colour image). The defaults are realsense-ros 4.x's names.

The launch imports sit inside the functions so that the argument handling below can be tested
without ROS launch installed (test/test_node_geometry.py).
"""

# Launch arguments that set the node parameter of the same name (only when given).
PARAMETER_ARGUMENTS = ("preset", "image_transport", "image_is_rectified", "support_library")
# realsense-ros 4.x (`ros2 launch realsense2_camera rs_launch.py align_depth.enable:=true`) names.
DEFAULT_CAMERA = "/camera/camera/color"
DEFAULT_DEPTH = "/camera/camera/aligned_depth_to_color/image_raw"


def parameter_value(name: str, text: str):
    if name != "image_is_rectified":
        return text
    lowered = text.strip().lower()
    if lowered not in ("true", "false"):
        raise ValueError(f"launch argument image_is_rectified must be true or false, got {text!r}")
    return lowered == "true"


def node_parameters(params_file: str, arguments: dict) -> list:
    """[params_file, {overrides}]: a launch argument overrides the params file only when given."""
    overrides = {name: parameter_value(name, arguments[name]) for name in PARAMETER_ARGUMENTS if arguments.get(name)}
    return [params_file, overrides] if overrides else [params_file]


def node_remappings(camera: str, depth: str) -> list:
    """The node's relative topics onto the driver's. No remap for the compressed topic: the node
    derives it from the resolved image topic, as image_transport does."""
    camera = camera.rstrip("/")
    return [("image", f"{camera}/image_raw"), ("camera_info", f"{camera}/camera_info"), ("depth", depth)]


def _node(context):
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    def value(name):
        return LaunchConfiguration(name).perform(context)

    return [
        Node(
            package="pop_ros",
            executable="pop_node",
            name="pop_node",
            namespace=value("namespace"),
            output="screen",
            parameters=node_parameters(value("params_file"), {name: value(name) for name in PARAMETER_ARGUMENTS}),
            remappings=node_remappings(value("camera"), value("depth")),
        )
    ]


def generate_launch_description():
    import os

    from ament_index_python.packages import get_package_share_directory
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    from launch import LaunchDescription

    share = get_package_share_directory("pop_ros")
    given_only = " (empty: the params file's value)"
    arguments = [
        DeclareLaunchArgument(
            "params_file", default_value=os.path.join(share, "config", "pop_ros.yaml"), description="node parameters"
        ),
        DeclareLaunchArgument("preset", default_value="", description="model preset" + given_only),
        DeclareLaunchArgument("image_transport", default_value="", description="raw | compressed" + given_only),
        DeclareLaunchArgument(
            "image_is_rectified", default_value="", description="true | false (raw, distorted images)" + given_only
        ),
        DeclareLaunchArgument("support_library", default_value="", description="support library YAML" + given_only),
        DeclareLaunchArgument("namespace", default_value="", description="the node's namespace"),
        DeclareLaunchArgument(
            "camera", default_value=DEFAULT_CAMERA, description="colour camera namespace (<camera>/image_raw)"
        ),
        DeclareLaunchArgument("depth", default_value=DEFAULT_DEPTH, description="depth image aligned to the colour"),
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=_node)])
