"""The package version, defined once: setup.py and the extension's build info read it from here."""

__version__ = "0.2.0"
