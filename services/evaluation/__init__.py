"""Closed-loop evaluation: models grasping on an arm configuration, scored with intervals."""
