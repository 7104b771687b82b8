"""Method ``rewis3d``: 2D and 3D mean-teacher branches with bidirectional cross-view consistency
(after Rewis3d, sections 3.2-3.4), adapted to image volumes. No Qt. See ``docs/methods/rewis3d.md``.
"""
