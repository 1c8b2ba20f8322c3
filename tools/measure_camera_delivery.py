"""How many camera frames reach a subscriber in another process on this host: pop-bench's tracking
camera (`python -m pop_ros.bench.tracking --serve-camera`: colour bgr8, depth 32FC1 and camera_info
on the same stamps) publishes for SECONDS at RATE, and a plain RosClient here counts what arrives
(reliable, with pop_node's queue depth: as pop_node subscribes). The camera runs with the shipped Fast DDS profile
(config/fastdds_large_images.xml) unless `--no-profile` (then with Fast DDS's defaults, or what
your environment sets). No pop_node, no models: the transport alone.
Run: `python tools/measure_camera_delivery.py [WIDTH HEIGHT RATE SECONDS] [--no-profile]`
(default 640 480 30 10); prints JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    use_profile = "--no-profile" not in argv
    numbers = [a for a in argv if a != "--no-profile"]
    width, height, rate, seconds = (numbers + ["640", "480", "30", "10"][len(numbers) :])[:4]
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    from sensor_msgs.msg import CameraInfo, Image

    from pop_ros.bench.tracking import camera_environment, dds_profile
    from pop_ros.clients.ros_client import RosClient
    from pop_ros.paths import FASTDDS_PROFILE_VARIABLES
    from pop_ros.ros.camera import sensor_qos

    environment = camera_environment() if use_profile else dict(os.environ)
    if not use_profile:
        for variable in FASTDDS_PROFILE_VARIABLES:
            environment.pop(variable, None)
    counts = {"image": 0, "depth": 0, "camera_info": 0}

    def counter(topic: str):
        return lambda _msg: counts.__setitem__(topic, counts[topic] + 1)

    ros = RosClient("measure_camera_delivery")
    try:
        for topic in counts:  # each one subscribed: the camera waits for a subscriber on each topic
            message_type = CameraInfo if topic == "camera_info" else Image
            ros.node.create_subscription(message_type, f"/delivery/{topic}", counter(topic), sensor_qos("reliable"))
        time.sleep(1.0)  # the subscriptions matched before the camera starts
        command = [sys.executable, "-m", "pop_ros.bench.tracking", "--serve-camera", "delivery"]
        command += [width, height, rate, seconds]
        output = subprocess.run(command, capture_output=True, text=True, env=environment, check=True).stdout
        time.sleep(0.5)  # the last frames
    finally:
        ros.close()
    camera = json.loads(output.strip().splitlines()[-1])
    report = {
        "camera": f"{width}x{height} at {rate} Hz",
        "dds_profile": dds_profile(environment) or "Fast DDS defaults",
        "published": camera["published"],
        "received_colour": counts["image"],
        "received_depth": counts["depth"],
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
