"""Exception types for errors a user can cause (bad files, bad annotations, bad options).

Every message is one line naming the input, what is wrong and the fix. The CLI prints these
without a traceback and the widgets show them as notifications. Imports no Qt.
"""


class WssegError(ValueError):
    """A user-facing error: the message alone tells the user what to fix."""


class AnnotationError(WssegError):
    """Invalid weak annotations (CSV rows, layers, class ids, coordinates)."""


class ImageFormatError(WssegError):
    """An image or label file that cannot be read or written as asked."""


class ProjectError(WssegError):
    """A project folder that is missing, damaged or from an unknown schema version."""


class ModelError(WssegError):
    """A model folder that is missing, damaged, or does not fit the image it is applied to."""
