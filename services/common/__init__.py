"""The runtime every graspfleet service shares: config, logging, errors, metrics, the gRPC server."""
