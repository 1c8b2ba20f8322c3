"""Launch pop_node beside a camera driver.

    # realsense-ros 4.x: ros2 launch realsense2_camera rs_launch.py align_depth.enable:=true
    ros2 launch pop_ros pop_ros.launch.py            # the shipped example library: mug_handle, bottle_neck
    ros2 launch pop_ros pop_ros.launch.py namespace:=left_arm camera:=/left/color \
        depth:=/left/aligned_depth/image_raw image_transport:=compressed params_file:=/path/to/my_params.yaml
    # teaching into your own library (it may not exist yet)
    ros2 launch pop_ros pop_ros.launch.py support_library:=$HOME/parts.yaml library_writable:=true teach_set:=lid
    # a bag: replay it with its clock, or lift the frame-age limit
    ros2 bag play my_bag --clock & ros2 launch pop_ros pop_ros.launch.py use_sim_time:=true

`ros2 launch pop_ros pop_ros.launch.py --show-args` lists every argument with its description.
Node parameters (`preset`, `support_library`, `autostart`, ...) override the params file only when
given; `support_library` defaults to the shipped example library, `support_library:=''` keeps the
params file's value. `log_level` is the node's ROS log level (`--log-level`).

The launch imports sit inside the functions so that the argument handling below can be tested
without ROS launch installed (test/test_launch.py).
"""

import os

# Launch arguments that set the pop_node parameter of the same name (only when given, i.e. non-empty).
PARAMETER_ARGUMENTS = (
    "preset",
    "support_library",
    "autostart",
    "library_writable",
    "teach_set",
    "image_transport",
    "depth_transport",
    "image_is_rectified",
    "max_frame_age",
)
BOOLEAN_ARGUMENTS = ("autostart", "library_writable", "image_is_rectified", "use_sim_time")
FLOAT_ARGUMENTS = ("max_frame_age",)
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")
# realsense-ros 4.x (`ros2 launch realsense2_camera rs_launch.py align_depth.enable:=true`) names.
DEFAULT_CAMERA = "/camera/camera/color"
DEFAULT_DEPTH = "/camera/camera/aligned_depth_to_color/image_raw"

GIVEN_ONLY = " (empty: the params file's value)"
BAG_REPLAY = (
    "For a bag: `ros2 bag play --clock` with use_sim_time:=true, or max_frame_age:=0 when the bag is "
    "replayed without --clock (its stamps are then older than the node's wall clock)."
)


def example_library(share: str) -> str:
    """The support library shipped with the package (sets mug_handle and bottle_neck)."""
    return os.path.join(share, "config", "supports", "library.yaml")


def launch_arguments(share: str) -> list[tuple[str, str, str]]:
    """(name, default, description) of every launch argument; `share` is pop_ros' share folder."""
    return [
        ("params_file", os.path.join(share, "config", "pop_ros.yaml"), "node parameters (YAML)"),
        ("preset", "", "model preset, e.g. qwen2.5-vl-7b or tiny (random weights)" + GIVEN_ONLY),
        (
            "support_library",
            example_library(share),
            "support library YAML; default: the shipped example (sets mug_handle, bottle_neck); "
            "'' = the params file's value",
        ),
        ("autostart", "", "true | false: configure and activate at start (false: drive the lifecycle)" + GIVEN_ONLY),
        (
            "library_writable",
            "",
            "true | false: persist taught exemplars and edits into support_library (give your own YAML, "
            "not the shipped example)" + GIVEN_ONLY,
        ),
        ("teach_set", "", "support set that clicks on ~/teach_click add to" + GIVEN_ONLY),
        ("image_transport", "", "raw | compressed" + GIVEN_ONLY),
        ("depth_transport", "", "raw | compressedDepth (<depth>/compressedDepth)" + GIVEN_ONLY),
        ("image_is_rectified", "", "true | false (raw, distorted images)" + GIVEN_ONLY),
        (
            "max_frame_age",
            "",
            "seconds; frames older than this against the node's clock are refused, 0 = no limit. "
            + BAG_REPLAY
            + GIVEN_ONLY,
        ),
        (
            "use_sim_time",
            "",
            "true | false: the node's clock follows /clock (a bag replayed with --clock, a simulator). "
            + BAG_REPLAY
            + " (empty: false)",
        ),
        ("log_level", "info", f"the node's log level: {' | '.join(LOG_LEVELS)}"),
        ("namespace", "", "the node's namespace (its topics are /<namespace>/pop_node/...)"),
        ("camera", DEFAULT_CAMERA, "colour camera namespace (<camera>/image_raw, <camera>/camera_info)"),
        ("depth", DEFAULT_DEPTH, "depth image aligned to the colour image"),
    ]


def parameter_value(name: str, text: str):
    """The launch argument's text as the node parameter's type; a bad value is a one-line error."""
    if name in BOOLEAN_ARGUMENTS:
        lowered = text.strip().lower()
        if lowered not in ("true", "false"):
            raise ValueError(f"launch argument {name} must be true or false, got {text!r}")
        return lowered == "true"
    if name in FLOAT_ARGUMENTS:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not value >= 0.0:  # also refuses nan
            raise ValueError(f"launch argument {name} must be a number of seconds >= 0, got {text!r}")
        return value
    return text


def node_parameters(params_file: str, arguments: dict, shipped_library: str = "") -> list:
    """[params_file, {overrides}]: a launch argument overrides the params file only when given."""
    names = (*PARAMETER_ARGUMENTS, "use_sim_time")
    overrides = {name: parameter_value(name, arguments[name]) for name in names if arguments.get(name)}
    library = overrides.get("support_library", "")
    if overrides.get("library_writable") and library and os.path.realpath(library) == os.path.realpath(shipped_library):
        raise ValueError(
            "library_writable:=true would write taught exemplars into the shipped example library; "
            "give support_library:=/path/to/your/library.yaml (it may not exist yet)"
        )
    return [params_file, overrides] if overrides else [params_file]


def node_ros_arguments(log_level: str) -> list:
    """`--ros-args` for the node: its log level."""
    level = log_level.strip().lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"launch argument log_level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    return ["--log-level", level]


def node_remappings(camera: str, depth: str) -> list:
    """The node's relative topics onto the driver's. No remap for the compressed topic: the node
    derives it from the resolved image topic, as image_transport does."""
    camera = camera.rstrip("/")
    return [("image", f"{camera}/image_raw"), ("camera_info", f"{camera}/camera_info"), ("depth", depth)]


def node_environment(share: str, environment=os.environ) -> dict[str, str]:
    """pop_node's extra environment: the shipped Fast DDS profile for large images (its heatmap, mask
    and cloud messages overrun Fast DDS's 512 KiB shared-memory segment; docs/tracking.md), unless
    the user named a profile of their own or runs another RMW."""
    from pop_ros.paths import large_images_dds_environment

    return large_images_dds_environment(environment, os.path.join(share, "config"))


def _share() -> str:
    from ament_index_python.packages import get_package_share_directory

    return get_package_share_directory("pop_ros")


def _node(context):
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    def value(name):
        return LaunchConfiguration(name).perform(context)

    names = (*PARAMETER_ARGUMENTS, "use_sim_time")
    return [
        Node(
            package="pop_ros",
            executable="pop_node",
            name="pop_node",
            namespace=value("namespace"),
            output="screen",
            parameters=node_parameters(
                value("params_file"), {name: value(name) for name in names}, shipped_library=example_library(_share())
            ),
            remappings=node_remappings(value("camera"), value("depth")),
            ros_arguments=node_ros_arguments(value("log_level")),
            additional_env=node_environment(_share()),
        )
    ]


def generate_launch_description():
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    from launch import LaunchDescription

    arguments = [
        DeclareLaunchArgument(name, default_value=default, description=description)
        for name, default, description in launch_arguments(_share())
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=_node)])
