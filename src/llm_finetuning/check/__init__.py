"""Pre-flight checks (`llmft check`): what would go wrong in a run, found in seconds before it starts."""
