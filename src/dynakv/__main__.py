"""`python -m dynakv` is the `dynakv` command."""

from dynakv.cli import main

main()
