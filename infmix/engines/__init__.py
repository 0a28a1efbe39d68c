"""Executors that run the processing units of a plan; every engine gives the same bytes."""
