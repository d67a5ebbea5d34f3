"""Data reading, formats, templates and tokenization with completion-only loss masks."""
