"""napari contributions (readers, sample data, dock widgets): the only package importing Qt."""
