"""Operating the broker: management operations, metrics and the HTTP API."""
