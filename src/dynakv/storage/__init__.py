"""dynakv.storage."""
