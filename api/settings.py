"""Server settings: one object per process, read from ``MORAG_*`` environment variables.

Every limit lives here with a default that runs on one machine with nothing else installed.
docs/configuration.md lists them all (a test keeps that list complete).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger("morag.settings")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MORAG_", env_file=None, extra="ignore")

    # Storage
    data_dir: Path = Field(Path("./data"), description="Embedded database, uploaded files, vector store.")
    database_url: str | None = Field(
        None, description="postgresql+asyncpg://... for PostgreSQL; default SQLite in data_dir."
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Signs download URLs and webhooks, encrypts cookies. Default: generated once "
        "and kept in data_dir/secret.key.",
    )
    public_url: str | None = Field(
        None, description="Base URL workers use to reach this server (default: the request's own)."
    )

    # Access
    allow_anonymous: bool = Field(False, description="Accept requests without a key (default lane).")
    key_cache_ttl_s: float = Field(
        1.0,
        ge=0,
        le=60,
        description="A server process re-checks a key (revoked? its user's fallback choices) this often; "
        "0 checks every request.",
    )

    # Leases and claims
    lease_s: float = Field(60.0, gt=1, description="Lease length; workers heartbeat at a third of it.")
    claim_wait_max_s: float = Field(30.0, ge=0, le=30, description="Longest long-poll a claim may ask for.")
    claim_wait_spread: float = Field(
        0.25,
        ge=0,
        le=0.9,
        description="A long-poll with no job ends at a random point within this final fraction of its "
        "wait, so that workers which started together (a server restart) re-poll apart, not in one burst.",
    )
    claim_recheck_s: float = Field(
        1.0,
        gt=0,
        description="While claims wait, one shared re-check per server process runs this often: one "
        "claim per distinct waiting claim (key, lanes, content types) finds jobs that became claimable "
        "by time (fallback due, retry backoff over); none while no job is queued at all. New jobs wake "
        "one waiter at once, without it. An idle worker's re-poll within this time of its group's empty "
        "look waits without a query.",
    )
    claim_handoff: bool = Field(
        True,
        description="A job queued while a claim of this server process that takes its lane as its own "
        "waits idle is leased to that claim by its own insert: the claim answers without a query (one "
        "statement and one commit fewer between the submit and the worker). Off: it wakes the claim, "
        "which runs its query.",
    )
    claim_standby_lane_rate: int = Field(
        20,
        ge=0,
        description="A worker whose slots and prefetched jobs are all taken keeps one standby claim "
        "open; a new job that no other waiting claim fits wakes it, so a user's first job does not "
        "wait for a busy worker's next batch. At most this many jobs of one lane a second go that "
        "way (a flooding lane's jobs wait for the batch claims, as before); 0: standby claims "
        "never take a job.",
    )
    notify_peers_check_s: float = Field(
        2.0,
        ge=0,
        description="PostgreSQL: while other server processes listen on its database, how often a "
        "server process looks whether they still do. While none does, its submits and completions "
        "send no NOTIFY (it wakes its own waiting claims directly) and it does not look: a process "
        "that starts says so on the channel at once. 0: always NOTIFY.",
    )
    max_attempts: int = Field(3, ge=1, description="Attempts before a job ends `dead`.")
    retry_base_s: float = Field(
        5.0,
        ge=0,
        description="First retry delay; doubles per attempt, jittered (each wait is 1/2 to 1 times it).",
    )
    retry_max_s: float = Field(600.0, ge=0, description="Longest retry delay.")
    reaper_interval_s: float = Field(1.0, gt=0, description="How often expired leases are reclaimed.")
    signed_url_ttl_s: float = Field(3600.0, gt=0, description="Validity of a signed download URL.")

    # Lanes and fallback
    presence_ttl_s: float = Field(
        60.0,
        gt=0,
        description="A worker not seen for this long is offline (its user's jobs may fall back). "
        "Was MORAG_WORKER_TTL_S, still read for one release with a warning.",
    )
    fallback_after_s: float = Field(
        300.0,
        ge=0,
        description="A GPU-lane job waiting this long becomes claimable by the user's CPU workers.",
    )
    shared_fallback_after_s: float = Field(
        900.0, ge=0, description="A user's job waiting this long becomes claimable by shared workers."
    )

    # Uploads
    max_upload_bytes: int = Field(5 * 1024**3, gt=0, description="Largest accepted upload (413 past it).")
    upload_chunk_bytes: int = Field(1024 * 1024, gt=0, description="Read size while streaming uploads.")
    download_chunk_bytes: int = Field(
        4 * 1024 * 1024,
        ge=64 * 1024,
        le=64 * 1024 * 1024,
        description="Read size while serving input files to workers (each read is one thread hop).",
    )
    file_retention_s: float = Field(
        3600.0, ge=0, description="Input files and artifacts are removed this long after their job ends."
    )
    max_artifact_bytes: int = Field(
        50 * 1024**2, gt=0, le=2**31 - 1, description="Largest artifact a worker may upload (413 past it)."
    )
    max_artifacts_per_job: int = Field(
        50, ge=0, description="Most artifacts one job may store (409 too_many_artifacts past it)."
    )
    file_sweep_interval_s: float = Field(
        60.0,
        gt=0,
        description="How often ended jobs' files are scheduled for deletion and expired ones removed.",
    )
    orphan_file_age_s: float = Field(
        3600.0, gt=0, description="Files on disk (or file rows) that no job uses are removed after this long."
    )

    # HTTP server (python -m api serve)
    http_keep_alive_s: int = Field(
        5, ge=1, description="An idle keep-alive connection is closed after this many seconds."
    )
    http_limit_concurrency: int = Field(
        2000,
        ge=10,
        description="Most connections and requests at once; past it new ones are answered 503 "
        "(long-polling workers count: keep it above the number of workers).",
    )
    http_header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A connection must send a complete request line plus headers this many seconds after "
        "it opens (or after the previous response); else it gets 408 and is closed (slowloris).",
    )
    http_max_header_bytes: int = Field(
        64 * 1024, ge=4096, description="Largest request line plus headers; past it the connection is closed."
    )
    http_graceful_shutdown_s: int = Field(
        35, ge=0, description="On shutdown, open requests (long-polls: up to 30 s) get this long to finish."
    )
    fast_routes: bool = Field(
        True,
        description="Serve the per-job JSON routes (claim, complete, heartbeat, fail, POST /process/url, "
        "POST /api/v1/ingest/url) with the same endpoint code but without FastAPI's router and dependency "
        "solving (api/fastpath.py); false sends them through FastAPI like every other route. Answers are "
        "the same either way.",
    )

    # Per-key limits (429 rate_limited with Retry-After past them; in-process)
    rate_submit_per_s: float = Field(
        20.0, gt=0, description="Submissions (/process/*, /api/v1/ingest*) a key may make per second."
    )
    rate_submit_burst: float = Field(
        200.0, ge=1, description="Submissions a key may make at once before the rate applies."
    )
    rate_claim_per_s: float = Field(
        50.0, gt=0, description="Claims (POST /worker/claim) a key may make per second."
    )
    rate_claim_burst: float = Field(
        200.0, ge=1, description="Claims a key may make at once before the rate applies."
    )
    max_uploads_per_key: int = Field(
        8, ge=1, description="Multipart uploads one key may have in progress at once."
    )
    max_polls_per_key: int = Field(
        32,
        ge=1,
        description="Claims (long-polls) one key may have open at once; run more workers with more keys.",
    )

    # Request size limits (413 past them)
    max_json_bytes: int = Field(
        1024 * 1024, gt=0, description="Largest JSON body on client routes; refused before it is read past."
    )
    max_batch_json_bytes: int = Field(
        10 * 1024 * 1024, gt=0, description="Largest JSON body of POST /api/v1/ingest/batch."
    )
    max_worker_json_bytes: int = Field(
        32 * 1024 * 1024,
        gt=0,
        description="Largest JSON body on worker routes (a completion carries the whole markdown result).",
    )
    max_options_bytes: int = Field(64 * 1024, gt=0, description="Largest `options` stored with a job.")
    max_metadata_bytes: int = Field(
        256 * 1024, gt=0, description="Largest `metadata` stored with a job (and with each of its chunks)."
    )

    # Client API
    process_wait_default_s: float = Field(
        60.0, ge=0, le=600, description="How long /process/* waits for the result when wait_s is not given."
    )
    process_wait_max_s: float = Field(
        600.0, ge=0, le=3600, description="Longest wait_s a /process/* request may ask for."
    )
    batch_max_items: int = Field(100, ge=1, le=10_000, description="Most items in one /api/v1/ingest/batch.")
    cookies_max_bytes: int = Field(
        1024 * 1024, gt=0, description="Largest cookies.txt a user may upload (PUT /api/v1/cookies)."
    )

    # Webhooks
    webhook_allow_private: bool = Field(
        False, description="Accept webhook targets on private or loopback addresses (tests, LAN setups)."
    )
    webhook_timeout_s: float = Field(10.0, gt=0, description="Timeout of one webhook POST.")
    webhook_retry_s: float = Field(
        3600.0, ge=0, description="A webhook is retried with backoff for this long after the job ended."
    )
    webhook_backoff_base_s: float = Field(
        1.0,
        gt=0,
        description="First webhook retry delay; doubles per try, jittered (each wait is 1/2 to 1 times it).",
    )
    webhook_backoff_max_s: float = Field(300.0, gt=0, description="Longest delay between webhook tries.")
    unserved_check_interval_s: float = Field(
        5.0, gt=0, description="How often queued tasks are told whether any online worker can take them."
    )
    webhook_sweep_interval_s: float = Field(
        30.0, gt=0, description="How often undelivered webhooks are looked for (after a restart, say)."
    )

    # Indexing (chunks, embeddings, vector store)
    chunk_size: int = Field(
        1000,
        gt=0,
        description="Target chunk size in characters (cut on word boundaries). The local MiniLM model "
        "reads 256 tokens (~1,100 characters): larger chunks are embedded by their start only.",
    )
    chunk_overlap: int = Field(150, ge=0, description="Characters shared by consecutive chunks.")
    gemini_api_key: SecretStr | None = Field(
        None, description="Embed with Gemini (google-genai) when set; else the local MiniLM model."
    )
    gemini_model: str = Field("gemini-embedding-001", description="Gemini embedding model.")
    gemini_dimensions: int = Field(768, gt=0, description="Gemini output dimensionality.")
    embed_batch_size: int = Field(100, gt=0, description="Texts per Gemini embedding request.")
    embed_max_retries: int = Field(5, ge=0, description="Retries of an embedding request on 429/5xx.")
    qdrant_url: str | None = Field(
        None, description="Qdrant server URL; default: local mode in data_dir/qdrant."
    )
    qdrant_api_key: SecretStr | None = Field(None, description="Qdrant server API key.")
    collection: str = Field("morag", description="Qdrant collection name.")
    distance: str = Field("cosine", pattern="^(cosine|dot|euclid|manhattan)$", description="Vector distance.")
    index_interval_s: float = Field(
        0.5,
        gt=0,
        description="Shortest wait between two looks of the indexer when a job is due but another "
        "server process holds it.",
    )
    index_idle_s: float = Field(
        30.0,
        gt=0,
        description="Longest the indexer sleeps while no ingest job is in its indexing stage. A result "
        "stored through this server process wakes it at once, and it wakes when a retry after an "
        "outage falls due or a dead process's hold ends; a result stored through another process is "
        "indexed by that one.",
    )
    index_retry_base_s: float = Field(
        2.0, gt=0, description="First wait after an embedding/vector store outage."
    )
    index_retry_max_s: float = Field(300.0, gt=0, description="Longest wait between indexing retries.")
    index_max_attempts: int = Field(
        30, ge=1, description="Indexing tries (outages included) before the task fails for good."
    )

    # Operations (logs, metrics, readiness)
    log_level: str = Field(
        "info", pattern="^(?i)(debug|info|warning|error|critical)$", description="Server log level."
    )
    log_json: bool = Field(False, description="Log one JSON object a line instead of text.")
    qdrant_local_max_points: int = Field(
        20_000,
        gt=0,
        description="Past this many points in Qdrant local mode the server warns (log, /ready): move "
        "to a Qdrant server (docs/deployment.md).",
    )

    @model_validator(mode="after")
    def _ttl_outlasts_heartbeats(self) -> Settings:
        """A presence TTL shorter than the heartbeat interval makes busy workers look offline."""
        # MORAG_WORKER_TTL_S sat in the worker's namespace; read it for one more release.
        old = os.environ.get("MORAG_WORKER_TTL_S")
        if old and "presence_ttl_s" not in self.model_fields_set:
            log.warning("MORAG_WORKER_TTL_S is deprecated: set MORAG_PRESENCE_TTL_S instead")
            self.presence_ttl_s = float(old)
        heartbeat = self.lease_s / 3
        if self.presence_ttl_s <= heartbeat:
            raise ValueError(
                f"MORAG_PRESENCE_TTL_S ({self.presence_ttl_s:g} s) must be longer than the workers' "
                f"heartbeat interval (MORAG_LEASE_S / 3 = {heartbeat:g} s): a busy worker would look "
                "offline between heartbeats and its user's jobs would go to shared workers early"
            )
        return self

    def __repr_args__(self) -> Any:
        """As pydantic's, with the password of ``database_url`` hidden (secrets are SecretStr)."""
        for name, value in super().__repr_args__():
            if name == "database_url" and isinstance(value, str):
                value = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1**********@", value)
            yield name, value

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'morag.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url().startswith("sqlite")

    def secret_bytes(self) -> bytes:
        """The server secret; generated once into data_dir/secret.key when not configured."""
        if self.secret_key and self.secret_key.get_secret_value():
            return self.secret_key.get_secret_value().encode()
        path = self.data_dir / "secret.key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        return path.read_text().strip().encode()
