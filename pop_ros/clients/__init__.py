"""Clients of pop_node: the Python ROS client, the py_trees behaviours' transport, the test harness."""
