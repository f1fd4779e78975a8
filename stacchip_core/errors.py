"""Exceptions. Everything stacchip raises on bad input is a StacchipError, so the
CLI can print it as one line and callers can catch one type."""


class StacchipError(Exception):
    """Base class for errors caused by input, configuration or data."""


class ProjectionError(StacchipError):
    """The item has no usable projection, or its CRS is not in metres."""


class PlatformError(StacchipError):
    """No installed plugin provides the platform, or it has no statistics."""


class AssetError(StacchipError):
    """An asset is missing, unreadable, or does not align with the chip grid."""


class PluginError(StacchipError):
    """A plugin failed to load or implements a hook that does not exist."""


class ObjectError(AssetError):
    """An object (an asset or an item JSON) could not be read: missing, forbidden,
    truncated, or the server kept failing. The message names the URL, redacted."""


class UnsafeKeyError(StacchipError):
    """A store key built from an option or catalog data would leave its prefix."""


class IndexFormatError(StacchipError):
    """A file is not a stacchip index (unreadable, wrong schema, missing values)."""


class GridError(StacchipError):
    """The chip grid of an item is degenerate (empty, too large, rotated, non-square pixels)."""


class SampleAttributeError(StacchipError, KeyError):
    """A platform's selection needs an attribute the sample source does not have (still a
    KeyError for code that catches one)."""

    __str__ = Exception.__str__
