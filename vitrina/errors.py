"""One exception base for vitrina and the specific errors the layers raise and the web maps to HTTP."""

from __future__ import annotations


class VitrinaError(Exception):
    """Base of every error vitrina raises on purpose. `status` is the HTTP status the web maps it to."""

    status = 500

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class ConfigError(VitrinaError):
    """The config file or an environment override is wrong."""


class CatalogueError(VitrinaError):
    """The catalogue file cannot be read at all (a bad row is skipped, not raised)."""


class BadInput(VitrinaError):
    """A request or command argument is invalid."""

    status = 400


class Unauthorized(VitrinaError):
    """A write came without a valid API key."""

    status = 401


class NotFound(VitrinaError):
    """An item, shopper or collection does not exist."""

    status = 404


class PayloadTooLarge(BadInput):
    """An upload or fetched image is over the configured limit."""

    status = 413


class UnsupportedMedia(BadInput):
    """A request body of a content type the endpoint does not take."""

    status = 415


class ImageError(BadInput):
    """An image cannot be decoded: not an image, truncated, or a decompression bomb."""

    status = 422


class ModelUnavailable(VitrinaError):
    """A model is needed but not there (e.g. no trained image tower yet)."""

    status = 503


class StoreError(VitrinaError):
    """The vector store failed or holds something unexpected."""

    status = 503
