"""User-facing errors.

Everything a user can cause (a bad file, a wrong field, a missing variable, a NaN loss) is raised as
a subclass of :class:`RLLReproError` with a one-line message that names the file, the field or layer,
and what is wrong. The CLI prints that line and exits with code 2 (``--debug`` shows the traceback).
"""


class RLLReproError(Exception):
    """Base class of every error caused by the user's input, not by a bug in rll_repro."""


class FormatError(RLLReproError):
    """A file cannot be read or is not of the expected kind (prototxt, caffemodel, .mat, ...)."""


class NetError(RLLReproError):
    """A net definition cannot be built: unknown layer type, dangling bottom, shape mismatch."""


class DataError(RLLReproError):
    """Data lists or images are missing or inconsistent."""


class TrainingError(RLLReproError):
    """Training cannot go on (non-finite loss or gradient, missing snapshot, ...)."""
