"""pywork's test suite."""
