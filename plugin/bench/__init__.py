"""Benchmarks behind ``hsearch bench ...``: real data, tables printed, JSON records and plots written."""
