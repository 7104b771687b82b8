"""Method ``dsp``: Decoupled Semantic Prototypes (Reiß et al., CVPR 2023). No Qt.

``model`` holds the prototype network, ``targets`` turns annotations into per-crop targets,
``losses`` the vectorised L_CE / L_DSP / L_PLF, ``method`` the :class:`DSPMethod` itself.
Import :mod:`napari_wsseg.methods.dsp.method` for the method (this package imports no torch).
"""
