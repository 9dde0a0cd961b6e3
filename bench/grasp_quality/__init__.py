"""Grasp-model quality on held-out objects: collect, train, CEM against random, a geometry bound."""
