"""dynakv.api."""
