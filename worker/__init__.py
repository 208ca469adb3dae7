"""The morag-remote worker: claims jobs over HTTPS, processes them locally, reports results.

Modules: ``client`` (all HTTP to the server), ``processors`` (one per content type, no I/O to the
server), ``executor`` (runs one job through its processor), ``runner`` (claim -> run -> report),
``__main__`` (command line only).
"""

__version__ = "0.1.0"
