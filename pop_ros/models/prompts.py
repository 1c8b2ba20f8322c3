"""Prompt text shared by the model configurations and the adapters, in a module without torch so
that the command-line tools can print their --help (which names the presets) without importing it."""

DEFAULT_PROMPT = "Point to the {query}."
