"""Levers on grasp success, each measured closed loop on validation arms only (make levers)."""
