"""Sans-IO protocol codecs: bytes in, frame objects out; frame objects in, bytes out."""
