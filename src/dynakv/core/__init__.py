"""dynakv.core."""
