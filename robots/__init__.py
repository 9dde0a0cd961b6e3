"""The Kuka arm: the simulated grasping world, robot drivers and the fleet inventory."""
