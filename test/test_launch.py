"""The launch file's arguments, without ROS launch (not installable from pip): its argument handling
imports nothing from launch, so it is loaded as a module; the ROS launch calls are checked by
reading the file's syntax tree."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest
import yaml

from pop_ros.paths import SOURCE_ROOT, config_dir

LAUNCH_FILE = SOURCE_ROOT / "launch" / "pop_ros.launch.py"
SHARE = "/opt/ros/kilted/share/pop_ros"  # any folder: the argument list only joins paths onto it


def launch_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("pop_ros_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # launch's own imports are inside its functions
    return module


@pytest.fixture(scope="module")
def launch():
    return launch_module()


def test_launch_arguments_override_the_params_file_only_when_given(launch):
    nothing = {name: "" for name in (*launch.PARAMETER_ARGUMENTS, "use_sim_time")}
    assert launch.node_parameters("/mine.yaml", nothing) == ["/mine.yaml"]  # the user's file rules
    given = {
        **nothing,
        "support_library": "/lib.yaml",
        "image_is_rectified": "false",
        "image_transport": "compressed",
        "autostart": "False",
        "library_writable": "true",
        "teach_set": "lid",
        "max_frame_age": "0",
        "use_sim_time": "true",
    }
    assert launch.node_parameters("/mine.yaml", given) == [
        "/mine.yaml",
        {
            "support_library": "/lib.yaml",
            "autostart": False,
            "library_writable": True,
            "teach_set": "lid",
            "image_transport": "compressed",
            "image_is_rectified": False,
            "max_frame_age": 0.0,
            "use_sim_time": True,
        },
    ]


def test_each_parameter_argument_sets_a_real_node_parameter_with_its_type(launch):
    from pop_ros.ros.parameters import PARAMETERS

    sample = {bool: "true", float: "2.5", str: "x", int: "3"}
    for name in launch.PARAMETER_ARGUMENTS:
        assert name in PARAMETERS, name
        kind = PARAMETERS[name].type
        assert type(launch.parameter_value(name, sample[kind])) is kind, name
    # The shipped params file has every one of them, so "empty = the params file's value" holds.
    params = yaml.safe_load((config_dir() / "pop_ros.yaml").read_text())["/**"]["ros__parameters"]
    assert set(launch.PARAMETER_ARGUMENTS) <= set(params)


@pytest.mark.parametrize(
    "name,text,message",
    [
        ("image_is_rectified", "maybe", "launch argument image_is_rectified must be true or false, got 'maybe'"),
        ("autostart", "1", "launch argument autostart must be true or false, got '1'"),
        ("use_sim_time", "yes", "launch argument use_sim_time must be true or false, got 'yes'"),
        ("max_frame_age", "soon", "launch argument max_frame_age must be a number of seconds >= 0, got 'soon'"),
        ("max_frame_age", "-1", "launch argument max_frame_age must be a number of seconds >= 0, got '-1'"),
        ("max_frame_age", "nan", "launch argument max_frame_age must be a number of seconds >= 0, got 'nan'"),
    ],
)
def test_bad_values_are_refused_with_the_argument_named(launch, name, text, message):
    with pytest.raises(ValueError) as raised:
        launch.parameter_value(name, text)
    assert str(raised.value) == message


def test_log_level_becomes_the_node_s_ros_argument(launch):
    assert launch.node_ros_arguments("DEBUG") == ["--log-level", "debug"]
    with pytest.raises(ValueError, match="log_level must be one of debug, info, warn, error, fatal, got 'loud'"):
        launch.node_ros_arguments("loud")


def test_support_library_defaults_to_the_shipped_example_which_has_the_readme_s_set(launch):
    arguments = {name: (default, description) for name, default, description in launch.launch_arguments(SHARE)}
    assert arguments["support_library"][0] == f"{SHARE}/config/supports/library.yaml"
    assert arguments["params_file"][0] == f"{SHARE}/config/pop_ros.yaml"
    # setup.py installs config/supports/library.yaml there; it holds the set the README calls first.
    shipped = yaml.safe_load((SOURCE_ROOT / "config" / "supports" / "library.yaml").read_text())
    assert "mug_handle" in shipped["sets"]
    assert '"share/" + package_name + "/config/supports"' in (SOURCE_ROOT / "setup.py").read_text()
    # Default values therefore set it on the node (the other node parameters stay the params file's).
    defaults = {name: default for name, (default, _) in arguments.items()}
    assert launch.node_parameters("/p.yaml", defaults) == ["/p.yaml", {"support_library": defaults["support_library"]}]
    # Teaching into the shipped example is refused: it is read-only in an install.
    with pytest.raises(ValueError, match="give support_library:=/path/to/your/library.yaml"):
        launch.node_parameters(
            "/p.yaml", {**defaults, "library_writable": "true"}, shipped_library=launch.example_library(SHARE)
        )
    own = launch.node_parameters(
        "/p.yaml", {**defaults, "support_library": "/home/me/parts.yaml", "library_writable": "true"},
        shipped_library=launch.example_library(SHARE),
    )  # fmt: skip
    assert own[1] == {"support_library": "/home/me/parts.yaml", "library_writable": True}


def test_every_common_switch_is_an_argument_and_bag_replay_is_explained(launch):
    arguments = {name: (default, description) for name, default, description in launch.launch_arguments(SHARE)}
    for name in ("use_sim_time", "autostart", "log_level", "library_writable", "teach_set", "max_frame_age"):
        assert name in arguments, name
    for name in ("use_sim_time", "max_frame_age"):
        description = arguments[name][1]
        assert "ros2 bag play --clock" in description and "max_frame_age:=0" in description, name
    assert arguments["log_level"][0] == "info"


def test_ros_launch_receives_every_argument_and_the_node_s_log_level():
    """The parts that need ROS launch, read from the syntax tree: each (name, default, description)
    becomes a DeclareLaunchArgument, and the Node gets the parameters, remappings and ros_arguments."""
    tree = ast.parse(LAUNCH_FILE.read_text())
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    declared = [
        call
        for call in ast.walk(functions["generate_launch_description"])
        if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "DeclareLaunchArgument"
    ]
    assert len(declared) == 1 and {k.arg for k in declared[0].keywords} == {"default_value", "description"}
    comprehension = next(c for c in ast.walk(functions["generate_launch_description"]) if isinstance(c, ast.ListComp))
    assert ast.unparse(comprehension.generators[0].iter) == "launch_arguments(_share())"
    node_call = next(
        c for c in ast.walk(functions["_node"]) if isinstance(c, ast.Call) and getattr(c.func, "id", "") == "Node"
    )
    keywords = {k.arg: ast.unparse(k.value) for k in node_call.keywords}
    assert keywords["ros_arguments"] == "node_ros_arguments(value('log_level'))"
    assert keywords["parameters"].startswith("node_parameters(value('params_file')")
    assert keywords["executable"] == "'pop_node'"
    assert keywords["additional_env"] == "node_environment(_share())"


def test_the_node_gets_the_large_images_dds_profile_unless_the_user_has_one(launch):
    """Under the variable its distro's Fast DDS reads (FASTRTPS_ up to Fast DDS 2.x: Jazzy), and not
    when the user named a profile under either name or runs another RMW."""
    share = str(config_dir().parent)
    shipped = launch.node_environment(share, {})["FASTDDS_DEFAULT_PROFILES_FILE"]
    assert shipped == str(config_dir() / "fastdds_large_images.xml") and pathlib.Path(shipped).is_file()
    assert launch.node_environment(share, {"ROS_DISTRO": "jazzy"}) == {"FASTRTPS_DEFAULT_PROFILES_FILE": shipped}
    assert launch.node_environment(share, {"ROS_DISTRO": "kilted"}) == {"FASTDDS_DEFAULT_PROFILES_FILE": shipped}
    for own in ({"FASTDDS_DEFAULT_PROFILES_FILE": "/mine.xml"}, {"FASTRTPS_DEFAULT_PROFILES_FILE": "/mine.xml"}):
        assert launch.node_environment(share, own) == {}
    assert launch.node_environment(share, {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}) == {}
    assert launch.node_environment(share, {"RMW_IMPLEMENTATION": "rmw_fastrtps_cpp"}) != {}


def test_rviz_config_shows_the_launch_file_s_default_topics(launch):
    rviz = yaml.safe_load((config_dir() / "pop_ros.rviz").read_text())["Visualization Manager"]
    shown = {(d["Class"].split("/")[-1], d["Topic"]["Value"]) for d in rviz["Displays"] if "Topic" in d}
    assert (("Image", f"{launch.DEFAULT_CAMERA}/image_raw")) in shown
    assert rviz["Global Options"]["Fixed Frame"] == "camera_color_optical_frame"
    # Every output the node publishes for people, each with the display of its type: the node's own list.
    source = (SOURCE_ROOT / "pop_ros" / "ros" / "outputs.py").read_text()
    published = re.findall(r'create_lifecycle_publisher\((\w+), "~/(\w+)"', source)
    display = {"Image": "Image", "PointStamped": "PointStamped", "PoseStamped": "Pose", "PointCloud2": "PointCloud2",
               "MarkerArray": "MarkerArray"}  # fmt: skip
    wanted = {(display[kind], f"/pop_node/{name}") for kind, name in published if kind in display}
    wanted.discard(("Image", "/pop_node/heatmap_raw"))  # 32FC1 values for programs; ~/heatmap is its picture
    regions = {("Pose", "/pop_node/grasp"), ("Image", "/pop_node/part_mask"), ("PointCloud2", "/pop_node/part_cloud")}
    assert regions <= wanted
    assert wanted - shown == set()


def test_remappings_follow_the_camera_namespace(launch):
    assert launch.node_remappings("/camera/camera/color/", "/d") == [
        ("image", "/camera/camera/color/image_raw"),
        ("camera_info", "/camera/camera/color/camera_info"),
        ("depth", "/d"),
    ]
