"""Sovra's ground floor: the vocabulary every other package speaks (spec models, errors and the router's verdicts,
`Backend` and `Place`, provision settings). It imports nothing of the rest, so everything else imports down to it."""

from sovra import __version__

__all__ = ["__version__"]
