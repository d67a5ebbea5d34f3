"""Model loading, tiny models for tests, and adapters."""
