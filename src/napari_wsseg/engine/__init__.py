"""Training infrastructure shared by methods: devices, progress/cancel/time budget. No Qt."""
