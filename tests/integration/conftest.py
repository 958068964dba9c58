"""Integration tests: real PostgreSQL, real drivers, the fault proxy."""
