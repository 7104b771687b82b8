"""Size targets: a U-Net trained from approximate class sizes per slice (+ points, masks, tags). No Qt.

Modules: :mod:`.method` (``SizeMethod``, ``SizeConfig``, registered as ``size``), :mod:`.losses`
(forward KL size loss, tag size loss, CRF/Potts loss, partial CE) and :mod:`.slice_means` (the
cache that gives crops their whole slice's mean prediction). Importing this package does not
import torch.
"""
