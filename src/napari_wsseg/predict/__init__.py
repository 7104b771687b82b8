"""Prediction: slice by slice for images and stacks, tiling with overlap, block-wise volumes. No Qt."""
