"""Route paths, spelled once for the server and the worker."""

CLAIM = "/worker/claim"
HEARTBEAT = "/worker/heartbeat"
COMPLETE = "/worker/complete"
FAIL = "/worker/fail"
ARTIFACT = "/worker/artifact"
HELLO = "/worker/hello"
FILES = "/files/{file_id}"
