"""MQTT bridges to remote brokers (``[[bridge]]`` tables): ``config`` parses them (the
broker's configuration builds on it, so this package imports nothing at its top),
``bridge`` runs them, ``remote`` is the client connection to the remote broker."""
