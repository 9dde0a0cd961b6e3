"""Lever 1 on the proxy-real domain: sim pretraining and the training budget (make pretraining)."""
