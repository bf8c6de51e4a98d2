"""Tests of the OpenCascade analysis, the worker pool, and the workers the tests run in it."""
