"""Data: converters to Dream's SFT format, collation, and the built-in arithmetic task."""
