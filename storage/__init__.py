"""The log-structured store for durable broker state."""
