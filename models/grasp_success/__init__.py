"""The grasp-success network C(x0, xt, v): samples, model, training, SavedModel export."""
