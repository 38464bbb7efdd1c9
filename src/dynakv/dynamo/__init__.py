"""DynamoDB's data model and expression language, as pure code.

``values`` owns attribute values (parse, validate, render, numbers, size);
``encoding`` owns their bytes (the stored item, the order-preserving key
encoding, key value checks); ``expressions`` owns the expression language
(parse, resolve, evaluate) and the legacy parameters; ``errors`` names
DynamoDB's own error types. Nothing here imports the node, does I/O, or reads
a clock.
"""
