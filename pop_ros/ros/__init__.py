"""The ROS 2 front end: the node (lifecycle and wiring), its parameters, camera input and outputs."""
