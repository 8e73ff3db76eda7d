"""jaxunlearn: make a language model forget, and prove that it did."""

__version__ = "0.1.0"
