"""RSCF: generative-AI content production as an event-streaming system.

This package is the ground every other one stands on (settings, the pool table, clock and backoff,
the S3 and Kafka client factories) and imports none of them; the command line is `cli/`.
"""

__version__ = "0.1.0"
