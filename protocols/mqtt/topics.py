"""Topic name and topic filter validity (MQTT 3.1.1 section 4.7).

UTF-8 well-formedness and U+0000 are checked where strings are decoded (codec),
so these functions only look at the level structure and the length bound.
"""

_MAX_TOPIC_BYTES = 65535  # a UTF-8 string's length prefix is 16 bits [MQTT-4.7.3-3]


def _fits(topic: str) -> bool:
    # Each character is at most 4 UTF-8 bytes: skip the encode for short topics.
    return len(topic) * 4 <= _MAX_TOPIC_BYTES or len(topic.encode()) <= _MAX_TOPIC_BYTES


def is_valid_topic_name(topic: str) -> bool:
    """True if ``topic`` may name a published message: non-empty, no wildcards."""
    # [MQTT-4.7.3-1] at least one character; [MQTT-4.7.1-1] no wildcards in names.
    return bool(topic) and "+" not in topic and "#" not in topic and _fits(topic)


def is_valid_topic_filter(topic_filter: str) -> bool:
    """True if ``topic_filter`` may be subscribed to."""
    if not topic_filter or not _fits(topic_filter):  # [MQTT-4.7.3-1]
        return False
    if "+" not in topic_filter and "#" not in topic_filter:
        return True  # the common case: no wildcards, nothing to inspect
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != last):  # [MQTT-4.7.1-2]
            return False
        if "+" in level and level != "+":  # [MQTT-4.7.1-3]
            return False
    return True
