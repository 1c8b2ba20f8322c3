"""Following a part between full answers: the Lucas-Kanade tracker, the follower shared by pop_node
and pop-bag, synthetic scenes."""
