"""Built-in offline tasks."""
