"""Exceptions raised for user input. Every message says what was wrong, the value, what is
allowed, and what to do — the CLI prints it as is and exits non-zero."""


class FeatxError(Exception):
    """Base class of every error featx raises for bad input or a refused operation."""


class UnknownNameError(FeatxError, KeyError):
    """A model, layer, classifier or other named thing is not known."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""


class WeightsError(FeatxError):
    """Weights cannot be found, downloaded, verified or loaded."""


class ConfigMismatchError(FeatxError):
    """Features, models or indexes from different extractor configs were combined."""


class StoreError(FeatxError):
    """A feature store is missing, damaged, or incompatible with the request."""


class IntegrityError(StoreError):
    """A file's checksum or shape does not match what was recorded."""


class InputError(FeatxError, ValueError):
    """An option value or an input is invalid."""


class StoreLockedError(StoreError):
    """Another process is writing the store."""


class StaleArtifactError(StoreError):
    """A model or index no longer matches the store it was built from."""


class OutputFolderError(InputError):
    """An output folder holds something featx did not make, or lies inside an input."""


class InputsChangedError(InputError):
    """`--frozen`: the inputs differ from what the store holds."""


class DiskError(FeatxError):
    """No space left (ENOSPC, EDQUOT), a file too large, or a read-only filesystem (EROFS) where featx writes."""
