"""The `llmft` command: one thin module per verb group."""
