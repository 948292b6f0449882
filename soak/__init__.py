"""The seeded crash soak (issue #13, DESIGN.md §6-7): client threads keep a
ledger of acknowledged operations while a crasher SIGKILLs processes of the
running shape; afterwards a checker compares what the services hold with
the ledger. `python -m soak --help`; `make soak`."""
