"""The refiner: GraspGAN (sim to real-looking images) and RCAN (randomized to canonical)."""
