"""napari contributions (readers, sample data, dock widgets): the only package that imports Qt/napari."""
