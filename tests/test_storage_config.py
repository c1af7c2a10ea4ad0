"""The [storage] table of the configuration."""

from pathlib import Path

import pytest

from polybroker.config import ConfigError, StorageConfig, config_from_dict, load_config

CONFIG_DIR = Path(__file__).parent.parent / "config"


def test_example_config_lists_the_storage_defaults():
    config = load_config(CONFIG_DIR / "polybroker.toml")
    assert config.storage == StorageConfig()
    assert config.storage.persistence is True and config.storage.fsync == "batch"


def test_storage_settings_are_read():
    config = config_from_dict({"storage": {
        "persistence": False, "fsync": "always", "segment_size": 65536,
        "compaction_threshold": 1, "max_stored_messages_per_session": 7,
        "max_stored_bytes_per_session": 4096,
    }})
    assert config.storage == StorageConfig(
        persistence=False, fsync="always", segment_size=65536, compaction_threshold=1.0,
        max_stored_messages_per_session=7, max_stored_bytes_per_session=4096,
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"storage": {"fsync": "sometimes"}}, "storage.fsync: must be one of always, batch, never"),
        ({"storage": {"persistance": False}}, "storage.persistance: unknown key"),
        ({"storage": {"persistence": "no"}}, "storage.persistence: expected true or false"),
        ({"storage": {"segment_size": 100}}, "storage.segment_size: at least 4096"),
        ({"storage": {"segment_size": 1.5}}, "storage.segment_size: expected int"),
        ({"storage": {"compaction_threshold": 0}}, r"storage.compaction_threshold: must be in"),
        ({"storage": {"compaction_threshold": 1.5}}, r"storage.compaction_threshold: must be in"),
        ({"storage": {"max_stored_messages_per_session": 0}}, "must be greater than 0"),
        ({"storage": {"max_stored_bytes_per_session": True}}, "expected int"),
        ({"storage": "yes"}, "storage: must be a table"),
    ],
)
def test_bad_storage_config_is_rejected_naming_the_key(raw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        config_from_dict(raw)
