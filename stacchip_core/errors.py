"""Exceptions. Everything stacchip raises on bad input is a StacchipError, so the
CLI can print it as one line and callers can catch one type; the subclasses say which
input was bad, so a caller can catch one kind (a missing sample, an unwritable output)
and let the others through. Library code chains the low-level cause (``raise ... from
exc``): the CLI still prints only the message, ``-vv`` shows the chain (URLs redacted)."""


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


class ItemError(StacchipError):
    """A STAC item cannot be read, or lacks what every index needs (a datetime)."""


class ConfigError(StacchipError):
    """An option, environment variable or setting is missing, malformed or unsupported
    (a job index that is not a number, an unknown scheduler, an optional dependency a
    chosen format needs)."""


class CatalogError(StacchipError):
    """A STAC catalog cannot be opened or cannot answer the search asked of it."""


class SampleError(StacchipError):
    """A platform's sample source is missing or unreadable, or has no such sample."""


class OutputError(StacchipError):
    """An output cannot be written where asked (no file name, unwritable location)."""


class NotFoundError(StacchipError):
    """Nothing to work on where asked: no index files or cubes under a folder, no chips
    left after a filter."""


class ShapeError(StacchipError):
    """An array's shape does not fit what it goes with (a prediction and its chip, channel
    names and channels)."""


class CubeError(StacchipError):
    """Prechipped cubes disagree (bands of one platform), or a cube cannot be filled
    because more chips failed than it has spares."""


class SampleAttributeError(SampleError, KeyError):
    """A platform's selection needs an attribute the sample source does not have (still a
    KeyError for code that catches one)."""

    __str__ = Exception.__str__


class StackError(StacchipError):
    """A stack cannot be built or read: options that contradict, or a member that cannot be
    read (the message names the stack and the member)."""
