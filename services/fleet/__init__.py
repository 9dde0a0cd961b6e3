"""The local fleet: graspfleet's services as processes on loopback (`make run`)."""
