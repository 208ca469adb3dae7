"""Server-side indexing: chunk worker results, embed the chunks, store and search them per user.

Nothing here imports FastAPI; the server wires `Indexer` into its routes and background loop.
"""
