"""Size targets: a U-Net trained from approximate class sizes per slice (+ points, masks, tags).

Modules: :mod:`.method` (``SizeMethod``, ``SizeConfig``, registered as ``size``), :mod:`.losses`
(forward KL size loss, tag size loss, CRF/Potts loss, partial CE), :mod:`.slice_means` (the cache
that gives crops their whole slice's mean prediction) and :mod:`.calibration` (per-class offsets
that make the labels cover the target sizes). Importing this package does not import torch.
Imports no Qt.
"""
