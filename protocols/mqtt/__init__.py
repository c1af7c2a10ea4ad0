"""Sans-IO MQTT codec (3.1, 3.1.1; shaped for 5.0)."""
