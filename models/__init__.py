"""The learning libraries the services share: episode data, the grasp-success network, the generators, the model registry."""
