"""Errors raised by the data layer, so callers can catch data problems before any training."""

from __future__ import annotations


class DataError(ValueError):
    """A data or data-config problem; the message names the problem and the fix."""
