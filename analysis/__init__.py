"""Reads study result directories; never imports torch or ray."""
