"""Data: converters from s1K / GSM8K / prepared rows to Dream's SFT rows, token lengths, reports."""
