"""The one family of errors elbox raises for bad input or a failed computation.

Every error a user can cause is an :class:`ElboxError`; catching it catches them all. The kinds
about a value (a setting, the data, the model) also subclass ``ValueError``, so code that
already catches ``ValueError`` keeps working. Each message says what went wrong, why, and how
to fix it, in the library's own words; the command line adds its flag names when it reports one.
"""


class ElboxError(Exception):
    """Base class: any error caused by the user's input or by a computation that went wrong.

    The command line turns these into a one-line message and exit status 2.
    """


class SettingsError(ElboxError, ValueError):
    """A setting is out of range or of the wrong kind (a negative count, a non-positive scale, an unknown name)."""


class DataError(ElboxError, ValueError):
    """A data set cannot be used (missing file, wrong shape, NaN, values off the declared levels)."""


class ModelError(ElboxError, ValueError):
    """The model cannot be built or evaluated (unknown name, bad site, non-finite data)."""


class NoPriorLikelihoodSplit(ModelError):
    """A computation needs log p(z) and log p(x | z) separately, but the model gives only their sum."""


class InitializationError(ElboxError, ValueError):
    """No finite starting point: the log density is -inf or NaN where the chains would start."""


class FittingError(ElboxError):
    """Optimisation went wrong (a non-finite ELBO or loss): the message names the step and a remedy."""


class RunError(ElboxError):
    """A run folder cannot be used: no run in it, a damaged or changed file, settings that do not match."""


class OutputError(ElboxError):
    """A place to write results cannot be written (a read-only file, a folder where a file should be)."""
