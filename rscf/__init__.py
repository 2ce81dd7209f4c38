"""RSCF: generative-AI content production as an event-streaming system."""

__version__ = "0.1.0"
