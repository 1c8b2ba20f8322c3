"""Runnable examples (installed with the package; `ros2 run pop_ros <name>`)."""
