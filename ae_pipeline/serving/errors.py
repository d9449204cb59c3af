"""Errors of the serving layer."""

from __future__ import annotations


class ServingError(ValueError):
    """A model cannot serve the requested records or mode; the message says why."""


class NoModelError(ServingError):
    """No model version is published under the watched root (yet)."""
