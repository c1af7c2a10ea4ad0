"""AMQP 0-9-1: a sans-IO codec for the part of the protocol that real clients use."""
