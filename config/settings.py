"""Enginel settings: defaults < config/enginel.toml < ENGINEL_* environment < command-line flags."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

CONFIG_DIR = Path(__file__).resolve().parent
DEFAULT_TOML = CONFIG_DIR / "enginel.toml"


class Settings(BaseSettings):
    """Every option of the server; the README's configuration table mirrors this class."""

    model_config = SettingsConfigDict(env_prefix="ENGINEL_", extra="forbid", validate_default=True)

    # --- network
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 for all interfaces).")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on (0 picks a free one).")
    public_url: str | None = Field(
        None,
        description="External base URL (https://enginel.example.com) used in absolute links; "
        "derived from each request's Host when unset.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or CIDR networks of reverse proxies whose X-Forwarded-For is believed.",
    )
    reuse_port: bool = Field(False, description="Bind with SO_REUSEPORT so several processes share one port.")

    # --- storage
    data_dir: Path = Field(Path("data"), description="Directory for the embedded database and stored files.")
    mongodb_uri: str | None = Field(
        None,
        description="MongoDB URI (replica set or sharded cluster). Unset: start the embedded "
        "SecantusDB server under <data-dir>/db.",
    )
    mongodb_database: str = Field(
        "enginel", pattern=r"^[A-Za-z0-9_-]{1,63}$", description="Database name inside MongoDB."
    )
    embedded_db_start_timeout: float = Field(30.0, gt=0, description="Seconds to wait for the embedded database.")
    redis_url: str | None = Field(
        None,
        description="Redis URL (redis://host:6379/0) shared by all server processes for realtime "
        "fan-out, rate limits and presence. Unset: in-process implementations.",
    )

    storage_backend: Literal["filesystem", "gridfs"] = Field(
        "filesystem",
        description="Where CAD files live: filesystem (<data-dir>/files) or gridfs (in MongoDB, "
        "for several nodes without a shared disk).",
    )

    # --- limits
    max_json_body_bytes: int = Field(1_048_576, gt=0, description="Largest JSON request body accepted (413 above).")
    max_upload_bytes: int = Field(2 * 1024**3, gt=0, description="Largest CAD file accepted (FILE_TOO_LARGE above).")
    max_multipart_bytes: int = Field(
        64 * 1024**2,
        gt=0,
        description="Largest one-request multipart upload; bigger files use the streaming upload URL.",
    )
    max_concurrent_uploads: int = Field(
        4,
        ge=1,
        le=1000,
        description="Uploads one user may have streaming at once (signed-URL PUTs and multipart POSTs "
        "together); more answer 429.",
    )
    upload_url_ttl: int = Field(
        3600,
        ge=1,
        le=7 * 86400,
        description="Seconds a signed upload URL stays usable; a received file then has as long again to "
        "become a design before it is purged.",
    )
    upload_purge_interval: float = Field(
        300.0,
        gt=0,
        le=86400,
        description="Seconds between passes that purge expired uploads (releasing their storage quota) "
        "and unreferenced content; each pass handles a bounded batch.",
    )

    # --- processing
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=0,
        description="Analysis worker processes in this server process (0 disables analysis here).",
    )
    job_timeout_seconds: float = Field(
        600.0, gt=0, description="Seconds one analysis attempt may run before its worker is killed (then retried)."
    )
    job_max_retries: int = Field(
        2,
        ge=0,
        description="Retries of a job whose worker crashed, timed out or whose server vanished, "
        "before it fails with GEOMETRY_EXTRACTION_FAILED.",
    )
    job_lease_seconds: float = Field(
        30.0,
        ge=1,
        description="Lease a server process holds on a running job (renewed every third of it); "
        "a job whose lease expires is claimed again by any process.",
    )
    worker_memory_mb: int = Field(
        4096,
        ge=0,
        description="Address space one analysis worker process may use, in MiB (RLIMIT_AS; OpenCascade alone "
        "maps about 550 MiB). A file that needs more fails its job with a clear message. 0: no limit.",
    )
    job_poll_interval: float = Field(
        0.5, gt=0, le=60, description="Seconds an idle job runner waits before looking for pending jobs again."
    )
    viewable_max_triangles: int = Field(
        500_000,
        ge=1000,
        le=50_000_000,
        description="Triangles the browser viewer's GLB of a design may draw (instances counted); "
        "a finer mesh is coarsened until it fits.",
    )
    viewable_relative_deflection: float = Field(
        0.001,
        gt=0,
        le=0.1,
        description="Chord deflection of the viewer mesh as a fraction of the model's bounding-box diagonal.",
    )
    diff_part_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Seconds the geometric diff of two versions may spend on one part's boolean cuts; a part "
        "over it is reported as too complex (the whole job stays within ENGINEL_JOB_TIMEOUT_SECONDS).",
    )
    markup_carry_tolerance_mm: float = Field(
        0.01,
        gt=0,
        le=1000,
        description="How far (mm) a markup carried to a new version may land from its old place and still count "
        "as not moved.",
    )
    markup_orphan_distance_mm: float = Field(
        5.0,
        gt=0,
        le=1_000_000,
        description="A carried markup with none of its part's geometry within this distance (mm) of its old "
        "place is orphaned.",
    )
    download_recheck_bytes: int = Field(
        4 * 1024 * 1024,
        ge=65536,
        description="Bytes a download (original file or viewer GLB) sends between two checks that the caller may "
        "still read the design (session, membership, clearance, the design's current classification); a failed "
        "check ends the stream, audited as DOWNLOAD_REVOKED.",
    )
    download_flush_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds a client may take to accept each piece (up to 1 MiB) of a download or audit export; "
        "a client that stops reading longer is disconnected and its file and memory released.",
    )
    web_dir: Path = Field(
        Path(__file__).resolve().parent.parent / "web" / "dist",
        description="Directory of the built browser app served at / (make web builds it from web/).",
    )

    # --- identity
    bootstrap_admin: str | None = Field(
        None, description="username:password of a platform admin created when no user exists yet."
    )
    access_token_ttl: int = Field(86400, ge=60, description="Seconds an access token lives.")
    refresh_token_ttl: int = Field(30 * 86400, ge=300, description="Seconds a refresh token lives.")
    login_max_failures: int = Field(
        5, ge=1, description="Failed logins in a row from one client address that lock the account for that address."
    )
    login_lockout_seconds: int = Field(
        900, ge=1, description="Seconds an account stays locked for that address (and the window failures count in)."
    )
    login_attempts_per_minute: int = Field(
        20, ge=1, description="Login attempts allowed per client address per minute (429 above)."
    )
    argon2_time_cost: int = Field(3, ge=1, description="argon2id time cost for password hashes.")
    argon2_memory_kib: int = Field(65536, ge=8, description="argon2id memory cost in KiB for password hashes.")
    max_api_keys_per_user: int = Field(20, ge=1, le=1000, description="Live API keys one user may hold.")
    invitation_ttl: int = Field(
        7 * 86400, ge=60, description="Seconds an invitation to join an organization stays open."
    )
    max_pending_invitations: int = Field(
        100, ge=1, le=100_000, description="Pending invitations one organization may have at once."
    )
    self_service_organizations: bool = Field(
        False, description="Let any signed-in user create an organization (they become its OWNER)."
    )
    cookie_secure: bool = Field(
        True, description="Mark the session cookie Secure (HTTPS only); turn off only for plain-HTTP development."
    )

    # --- rate limits (per user or API key; per client address when anonymous)
    rate_limit_per_hour: int = Field(1000, ge=1, description="Requests per caller per hour.")
    rate_limit_per_minute: int = Field(100, ge=1, description="Requests per caller per minute (burst).")
    uploads_per_hour: int = Field(50, ge=1, description="CAD uploads per caller per hour.")

    # --- realtime (/ws/)
    realtime_allowed_origins: list[str] = Field(
        default_factory=list,
        description='Browser origins, besides the server\'s own, allowed to open /ws/ ("*" allows any).',
    )
    realtime_auth_timeout: float = Field(
        5.0, gt=0, description="Seconds a socket without a credential has to send its auth message."
    )
    realtime_max_message_bytes: int = Field(65536, ge=1024, description="Largest inbound WebSocket message.")
    realtime_max_subscriptions: int = Field(100, ge=1, description="Channels one connection may subscribe to.")
    realtime_max_sockets_per_user: int = Field(
        20,
        ge=1,
        description="Open WebSocket connections per user, counted across server processes when Redis is "
        "configured (4029 above).",
    )
    realtime_max_unauthenticated_per_address: int = Field(
        100,
        ge=1,
        description="WebSocket connections per client address that have not authenticated yet (4029 above).",
    )
    realtime_commands_per_second: float = Field(20.0, gt=0, description="Sustained messages per connection.")
    realtime_command_burst: int = Field(
        40, ge=1, description="Messages a connection may send above that rate in a burst."
    )
    realtime_max_pending_bytes: int = Field(
        4 * 1024 * 1024,
        ge=65536,
        description="Outbound bytes a connection may fall behind before it is closed as a slow consumer (4008).",
    )
    realtime_ping_interval: float = Field(20.0, ge=0, description="Seconds between keepalive pings (0: none).")
    realtime_ping_timeout: float = Field(20.0, gt=0, description="Seconds a pong may take; at most the interval.")
    realtime_history_size: int = Field(2000, ge=1, description="Events kept per channel for recovery with since.")
    realtime_history_ttl: float = Field(600.0, gt=0, description="Seconds an event stays recoverable.")
    realtime_presence_ttl: float = Field(
        60.0, gt=0, description="Seconds a presence entry lives without a heartbeat (a crashed process's users leave)."
    )
    realtime_max_event_bytes: int = Field(1_048_576, ge=1024, description="Largest event a publish accepts.")
    realtime_redis_prefix: str = Field(
        "enginel:rt",
        pattern=r"^[A-Za-z0-9:_-]{1,64}$",
        description="Prefix of the realtime keys and channels in Redis.",
    )

    # --- several processes on one database (models/cluster.py)
    cluster_heartbeat_interval: float = Field(
        5.0,
        gt=0,
        le=300,
        description="Seconds between this process's heartbeats in the database's process registry; each also "
        "looks for new peers and re-checks the file store.",
    )
    cluster_heartbeat_expiry: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Seconds after its last heartbeat that a process drops out of the registry (a crashed "
        "process leaves the cluster); at least twice the interval.",
    )
    allow_unshared_broker: bool = Field(
        False,
        description="Single-process override: start even though other live processes on this database use no "
        "Redis, or another Redis or prefix (this process then keeps its realtime events and rate limits to itself).",
    )

    # --- operations
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Logging level.")
    shutdown_grace_seconds: float = Field(
        10.0, ge=0, description="Seconds running work may take to finish on shutdown."
    )

    @model_validator(mode="after")
    def _expiry_outlasts_heartbeats(self) -> Settings:
        if self.cluster_heartbeat_expiry < 2 * self.cluster_heartbeat_interval:
            # One late heartbeat must not make a live process look dead to its peers.
            raise ValueError("cluster_heartbeat_expiry must be at least twice cluster_heartbeat_interval")
        return self

    @field_validator("bootstrap_admin")
    @classmethod
    def _admin_has_password(cls, value: str | None) -> str | None:
        if value is not None and (":" not in value or not value.split(":", 1)[0] or not value.split(":", 1)[1]):
            raise ValueError("must be username:password")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get("ENGINEL_CONFIG_FILE", DEFAULT_TOML))
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=toml_path))

    @property
    def db_dir(self) -> Path:
        return self.data_dir / "db"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_arg_parser() -> argparse.ArgumentParser:
    """One flag per setting, with the setting's own help text, so --help can never fall behind."""
    parser = argparse.ArgumentParser(
        prog="server.py",
        description="Enginel CAD design-review server.",
        epilog="Every flag can also be set as ENGINEL_<NAME> in the environment or in config/enginel.toml "
        "(path overridable with ENGINEL_CONFIG_FILE). Precedence: flag > environment > file > default.",
    )
    for name, field in Settings.model_fields.items():
        default = field.default if field.default_factory is None else "(computed)"
        help_text = f"{field.description} [env ENGINEL_{name.upper()}; default: {default}]"
        annotation = field.annotation
        if annotation is bool:
            parser.add_argument(
                _flag(name), dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        elif annotation == list[str]:
            parser.add_argument(
                _flag(name),
                dest=name,
                action="append",
                default=argparse.SUPPRESS,
                metavar="VALUE",
                help=help_text + " (repeatable)",
            )
        else:
            parser.add_argument(_flag(name), dest=name, default=argparse.SUPPRESS, metavar=name.upper(), help=help_text)
    return parser


def load_settings(argv: list[str] | None = None, **overrides: Any) -> Settings:
    """Settings from every source; argv flags and keyword overrides win over the environment and file."""
    flags = vars(build_arg_parser().parse_args(argv if argv is not None else []))
    return Settings(**{**flags, **overrides})
