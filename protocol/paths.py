"""Route paths, spelled once for the server and the worker."""

CLAIM = "/worker/claim"
HEARTBEAT = "/worker/heartbeat"
COMPLETE = "/worker/complete"
COMPLETE_BATCH = "/worker/complete-batch"
FAIL = "/worker/fail"
ARTIFACT = "/worker/artifact"
HELLO = "/worker/hello"
FILES = "/files/{file_id}"

#: The lease token of an artifact upload travels in this header, never in the URL (URLs get logged).
LEASE_TOKEN_HEADER = "X-Lease-Token"
