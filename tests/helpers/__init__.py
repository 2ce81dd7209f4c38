"""Test-only handlers, fakes and tiny random models, shared by unit, integration and end-to-end tests."""
