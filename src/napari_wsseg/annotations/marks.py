"""Per-slice marks that are not layers: tags, approximate sizes and "all boxed". Imports no Qt.

The Annotate widget keeps these in a :class:`SliceMarks` (points, boxes and scribbles live in
napari layers); :meth:`SliceMarks.rows` gives the rows of an
:class:`~napari_wsseg.annotations.model.Annotations`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import AnnotationError
from .model import Annotations
from .validate import SIZE_SUM_TOLERANCE


@dataclass
class SliceMarks:
    """Tags ``(z, class)``, sizes ``{(z, class): fraction}`` and all-boxed ``(z, class)`` marks.

    Examples
    --------
    >>> marks = SliceMarks()
    >>> marks.set_size(3, 0, 0.75); marks.set_size(3, 1, 0.2)
    >>> marks.incomplete_size_slices()  # 95 % is within the tolerance of 100 %
    []
    >>> marks.remove_class(0); sorted(marks.sizes.items())
    [((3, 0), 0.2)]
    """

    tags: set[tuple[int, int]] = field(default_factory=set)
    sizes: dict[tuple[int, int], float] = field(default_factory=dict)
    exhaustive: set[tuple[int, int]] = field(default_factory=set)

    @classmethod
    def from_annotations(cls, annotations: Annotations) -> "SliceMarks":
        """The tags, sizes and all-boxed marks of ``annotations``."""
        return cls(
            tags={(int(z), int(c)) for z, c in annotations.tags},
            sizes={(int(z), int(c)): float(f) for z, c, f in annotations.sizes},
            exhaustive={(int(z), int(c)) for z, c in annotations.exhaustive_boxes},
        )

    def set_tag(self, z: int, k: int, present: bool) -> None:
        """Tag class ``k`` as present (or not) in slice ``z``."""
        _toggle(self.tags, (int(z), int(k)), present)

    def set_exhaustive(self, z: int, k: int, all_boxed: bool) -> None:
        """Mark (or unmark) every object of class ``k`` in slice ``z`` as boxed."""
        _toggle(self.exhaustive, (int(z), int(k)), all_boxed)

    def set_size(self, z: int, k: int, fraction: float | None) -> None:
        """Set (or, with None, clear) the fraction of slice ``z`` covered by class ``k``.

        Raises
        ------
        AnnotationError
            ``fraction`` is outside [0, 1].
        """
        key = (int(z), int(k))
        if fraction is None:
            self.sizes.pop(key, None)
            return
        if not 0.0 <= fraction <= 1.0:
            raise AnnotationError(
                f"size {fraction} of class {k} in slice {z} is outside [0, 1]; give a "
                "fraction between 0 and 1"
            )
        self.sizes[key] = float(fraction)

    def clear_sizes(self, z: int) -> None:
        """Forget every size of slice ``z``."""
        self.sizes = {key: f for key, f in self.sizes.items() if key[0] != int(z)}

    def size_sum(self, z: int) -> float | None:
        """The sum of slice ``z``'s sizes, or None when it has none."""
        values = [f for (zz, _), f in self.sizes.items() if zz == int(z)]
        return float(sum(values)) if values else None

    def incomplete_size_slices(self) -> list[int]:
        """Slices whose sizes do not sum to 1 within :data:`SIZE_SUM_TOLERANCE` (not used yet)."""
        zs = sorted({z for z, _ in self.sizes})
        return [z for z in zs if abs(self.size_sum(z) - 1.0) > SIZE_SUM_TOLERANCE]

    def remove_class(self, k: int) -> None:
        """Drop class ``k``'s marks; the classes after it move down by one."""
        self.tags = {(z, c - (c > k)) for z, c in self.tags if c != k}
        self.sizes = {(z, c - (c > k)): f for (z, c), f in self.sizes.items() if c != k}
        self.exhaustive = {(z, c - (c > k)) for z, c in self.exhaustive if c != k}

    def rows(self) -> dict[str, list]:
        """``tags``, ``sizes`` (complete slices only) and ``exhaustive_boxes`` rows, sorted."""
        incomplete = set(self.incomplete_size_slices())
        return {
            "tags": sorted(self.tags),
            "sizes": [(z, c, f) for (z, c), f in sorted(self.sizes.items()) if z not in incomplete],
            "exhaustive_boxes": sorted(self.exhaustive),
        }


def _toggle(marks: set, key: tuple[int, int], on: bool) -> None:
    if on:
        marks.add(key)
    else:
        marks.discard(key)
