"""Processing: OpenCascade analysis of CAD files and the crash-tolerant process pool that runs it."""
