"""Prediction: slice by slice for images and stacks, block-wise volumes (read, schedule, store). No Qt."""
