"""Errors that the command line turns into one clear line and a non-zero exit."""


class PansegError(Exception):
    """A user-facing error: its message names the file and the problem, and is printed as one line."""


class PanopticFormatError(PansegError):
    """A COCO panoptic annotation (PNG or JSON) does not follow the format."""
