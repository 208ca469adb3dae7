"""The morag-remote server: users and keys, uploads, the job table and its lanes, the worker
protocol, indexing into the vector store, and the client API. ``python -m api --help``."""
