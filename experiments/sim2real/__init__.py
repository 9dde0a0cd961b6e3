"""The paper's Tables II and III and RCAN, closed loop on the proxy-real arm (make sim2real)."""
