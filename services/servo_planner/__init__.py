"""The servo-planner: CEM over 5-D motion commands scored by the grasp predictor."""
