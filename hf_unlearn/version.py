"""The library's version, in one place (read by the package, saved masks, cards and results files)."""

__version__ = "0.1.0.dev0"
