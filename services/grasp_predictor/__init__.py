"""The grasp predictor: the grasp-success network C(x0, xt, v), its training and its SavedModels."""
