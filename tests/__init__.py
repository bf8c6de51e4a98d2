"""Enginel's test suite: real database, Redis, sockets, HTTP and OpenCascade throughout."""
