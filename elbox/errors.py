"""Errors that elbox raises for bad input. Each says what went wrong, why, and how to fix it."""


class ElboxError(Exception):
    """Base class: any error caused by the user's input rather than a bug in elbox.

    The command line turns these into a one-paragraph message and exit status 2.
    """


class ModelError(ElboxError):
    """The model cannot be built or evaluated (unknown name, bad site, non-finite data)."""


class NoPriorLikelihoodSplit(ModelError):
    """A computation needs log p(z) and log p(x | z) separately, but the model gives only their sum."""


class InitializationError(ElboxError):
    """No finite starting point: the log density is -inf or NaN where the chains would start."""


class SettingsError(ElboxError):
    """A numeric setting is out of range (a negative count, a non-positive scale)."""


class FittingError(ElboxError):
    """Optimisation went wrong (a non-finite ELBO): the message names the step and a remedy."""


class DataError(ElboxError):
    """A data set cannot be used (missing file, wrong shape, NaN, values off the declared levels)."""
