"""Exceptions whose message is a one-line, user-facing reason."""


class InputError(Exception):
    """Bad input the user must fix (a file, a manifest row, a setting).

    The message is one line that names the file (or slide) and the problem.
    """


class SlideError(InputError):
    """A slide cannot be used: unreadable, not a slide, missing µm/px, unsafe id."""
