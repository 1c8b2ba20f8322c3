"""ROS messages and recordings: image conversion, stamps and depth pairing, the capture of a query's
frame, bag reading and writing."""
