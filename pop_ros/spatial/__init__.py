"""Where things are in space: the camera model, depth to 3D and plane fits, the grasp frame, locating
an answer."""
