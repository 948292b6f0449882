"""Integrations of the ASKMOJO storage services with other frameworks, each
behind an optional extra (`pip install 'askmojo-storage[langchain]'`)."""
