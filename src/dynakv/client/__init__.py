"""dynakv.client."""
