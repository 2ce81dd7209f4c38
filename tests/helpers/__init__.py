"""Test-only helpers (tiny random models) shared by the unit and integration tests."""
