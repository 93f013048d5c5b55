"""Tests of the durable brokers, parametrized over the backends."""
