"""Launch pop_node beside a camera driver.

    ros2 launch pop_ros pop_ros.launch.py
    ros2 launch pop_ros pop_ros.launch.py namespace:=left_arm camera:=/camera/color \
        depth:=/camera/aligned_depth_to_color/image_raw params_file:=/path/to/my_params.yaml
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription


def generate_launch_description():
    share = get_package_share_directory("pop_ros")
    arguments = [
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "pop_ros.yaml")),
        DeclareLaunchArgument(
            "support_library", default_value=os.path.join(share, "config", "supports", "library.yaml")
        ),
        DeclareLaunchArgument("namespace", default_value=""),
        DeclareLaunchArgument("camera", default_value="/camera/color", description="colour camera namespace"),
        DeclareLaunchArgument("depth", default_value="/camera/aligned_depth_to_color/image_raw"),
    ]
    camera = LaunchConfiguration("camera")
    parameters = [LaunchConfiguration("params_file"), {"support_library": LaunchConfiguration("support_library")}]
    node = Node(
        package="pop_ros",
        executable="pop_node",
        name="pop_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=parameters,
        remappings=[
            ("image", [camera, "/image_raw"]),
            ("image/compressed", [camera, "/image_raw/compressed"]),
            ("camera_info", [camera, "/camera_info"]),
            ("depth", LaunchConfiguration("depth")),
        ],
    )
    return LaunchDescription([*arguments, node])
