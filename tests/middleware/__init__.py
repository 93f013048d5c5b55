"""Tests of the built-in middleware (pywork.middleware)."""
