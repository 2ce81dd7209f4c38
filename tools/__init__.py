"""Benchmarks, the isolated-run harness, the stage profiler, model training and handler benches.

They drive the job, the workers and the stack from outside; no runtime package imports them.
"""
