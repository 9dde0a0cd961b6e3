"""The robot agent: the per-arm control loop, its safety rules and its small gRPC API."""
