"""MEWS: frozen DINO ViT features + one projection head per class, trained from a few clicks. No Qt.

Modules: :mod:`.method` (``MEWSMethod``, ``MEWSConfig``, registered as ``mews``), :mod:`.heads`
(the C projection heads), :mod:`.losses` (``L_corr``, ``L_proto``, ``L_triplet`` and the batched
GMM thresholds) and :mod:`.cache` (the feature cache). The backbone wrapper is shared and lives in
:mod:`napari_wsseg.engine.vit`. Importing this package does not import torch.
"""
