"""Entry point of the separate training process: ``python -m napari_wsseg.training``. No Qt."""

from .process import child_main

if __name__ == "__main__":
    child_main()
