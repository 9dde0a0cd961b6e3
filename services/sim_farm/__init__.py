"""The sim-farm: many simulated arms collecting labeled episodes into the store."""
