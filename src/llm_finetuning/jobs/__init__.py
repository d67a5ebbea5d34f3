"""The OpenAI fine-tuning API over llmft: files, jobs, events and checkpoints in a database; executors (local, Ray)."""
