"""dynakv.node."""
