"""The wire contract shared by the morag-remote server (`api`) and its workers (`worker`).

This package is a leaf: it imports neither side. It holds

- ``states``   task states and stages, key scopes, content types and lanes, and how a content
               type picks a lane;
- ``models``   the pydantic bodies every ``/worker`` route sends and receives;
- ``paths``    the route paths (and the lease-token header), so both sides spell them once;
- ``errors``   the error classes a worker reports, the error classes a task shows (with
               ``indexing_delayed`` / ``indexing_failed``), the stable error codes both sides act
               on, and the JSON error body the server answers;
- ``signing``  HMAC helpers for signed download URLs (created by the server, checked by it).

A job moves ``queued -> running -> succeeded | failed | dead``, or ``canceled`` from
``queued``/``running``; see docs/protocol.md for the diagram and the lease rules.
"""

PROTOCOL_VERSION = "1"
# Optional features a server announces in its hello (HelloResponse.features).
FEATURE_CLAIM_RESULTS = "claim-results"
FEATURE_CLAIM_STANDBY = "claim-standby"
