"""Test-only handlers and models, shared by unit, integration and end-to-end tests."""
