"""dynakv.net."""
