from glob import glob

from setuptools import find_packages, setup

package_name = "pop_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    package_data={package_name: ["data/*.png"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.rviz") + glob("config/*.xml")),
        ("share/" + package_name + "/config/heads", glob("config/heads/*.yaml")),
        ("share/" + package_name + "/config/supports", glob("config/supports/*.yaml")),
        ("share/" + package_name + "/config/supports/images", glob("config/supports/images/*.png")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="pop_ros maintainers",
    maintainer_email="maintainers@pop-ros.dev",
    description="Training-free few-shot part pointing (POP) for ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "pop_node = pop_ros.ros.program:main",
            "pop-point = pop_ros.cli.point:main",
            "pop-find-heads = pop_ros.cli.find_heads:main",
            "pop-eval = pop_ros.cli.evaluate:main",
            "pop-bench = pop_ros.bench.cli:main",
            "find-handle-tree = pop_ros.examples.find_handle_tree:main",
            "pop-bag = pop_ros.cli.bag:main",
            "pop-teach = pop_ros.cli.bag:teach_main",
        ],
    },
)
