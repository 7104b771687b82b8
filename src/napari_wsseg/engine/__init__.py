"""Training infrastructure shared by methods: devices, training loop, tiling, U-Net, ViT. No Qt."""
