"""Errors of the service that map to their own HTTP status (the rest of FeatxError: 409/422)."""

from featx.errors import FeatxError


class Forbidden(FeatxError):
    """403: a path outside --data-root (or no --data-root at all)."""


class NotFound(FeatxError):
    """404: no such row, job or file."""


class UnsupportedMedia(FeatxError):
    """415: not an image, or a body type the endpoint does not take."""
