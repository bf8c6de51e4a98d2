"""Realtime gateway tests: the protocol without a socket, both brokers, and real sockets against live servers."""
