"""The image generators: GraspGAN's refiner and RCAN's canonicalizer, their losses, training and export."""
