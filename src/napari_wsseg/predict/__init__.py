"""Prediction: slice by slice for images and stacks, block by block for volumes. No Qt."""
