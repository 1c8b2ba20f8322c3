"""pop_ros: training-free few-shot part pointing (POP, CVPR 2026) for ROS 2."""

__version__ = "0.1.0"
