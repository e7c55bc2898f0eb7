"""Load tests and application benchmarks that drive Parrot through its public HTTP API."""
