//! The records the stores read and write (accounts, shard versions, audit events, tokens,
//! idempotency records) and the small types the [`Store`](crate::Store) methods take and
//! answer with. Plain data: no database code.

use shardgate_policy::Version;

/// An account row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    /// Account id (exact bytes).
    pub account: String,
    /// Tier name as declared in the config.
    pub tier: String,
    /// Creation time, unix milliseconds.
    pub created_at: i64,
    /// Last tier change, unix milliseconds.
    pub updated_at: i64,
    /// Versions of each shard kept at write time (`Some(0)` = every version); `None` = the
    /// gateway's `[retention] keep_versions`.
    pub keep_versions: Option<i64>,
    /// The tier the account asked for, which the policy's tier rules may have moved it from
    /// (`None`: the same as `tier`).
    pub requested_tier: Option<String>,
    /// Numeric attributes set by the platform: a canonical JSON object (`{}`: none).
    pub attributes: String,
}

/// One write of [`Store::insert_shard_versions_grouped`]: a new version of a shard,
/// numbered after `row.version - 1`, placed by the account's tier and retention as the
/// writer read them (re-checked under the audit chain, as a single write's are).
#[derive(Clone, Copy)]
pub struct GroupedWrite<'a> {
    /// The row to insert.
    pub row: &'a ShardVersionRow,
    /// The account's tier the write was placed by.
    pub tier: &'a str,
    /// The account's `keep_versions` the write was numbered by: the caller groups only
    /// writes that prune nothing under it.
    pub keep_versions: Option<i64>,
}

impl std::fmt::Debug for GroupedWrite<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupedWrite")
            .field("account", &self.row.account)
            .field("shard", &self.row.shard)
            .field("version", &self.row.version)
            .finish_non_exhaustive()
    }
}

/// One version of the cluster's tier policy (`policy_versions`): the document as canonical
/// JSON, its SHA-256, when and by whom it was committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVersionRecord {
    /// 1, 2, ...: each commit is the one before plus one.
    pub version: i64,
    /// The policy document, canonical JSON.
    pub document: String,
    /// Hex SHA-256 of `document`.
    pub digest: String,
    /// Commit time, unix milliseconds.
    pub created_ms: i64,
    /// Who committed it (`config seed`, a token's name, `cli`).
    pub created_by: String,
}

/// An operator override of a backend's breaker (`breaker_overrides`): `open` until
/// `expires_ms` (maintenance), or `close` (now). The newest row of a backend wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerOverride {
    /// Assigned by the insert: the highest plus one (0 before).
    pub id: i64,
    /// Backend instance name.
    pub backend: String,
    /// `open` or `close`.
    pub action: String,
    /// When, unix milliseconds.
    pub created_ms: i64,
    /// An `open` is in force until then; a `close`: its `created_ms`.
    pub expires_ms: i64,
    /// Who (a token's name, `cli`).
    pub created_by: String,
}

/// A dual-control request (`approvals`): an operation stored until a second credential
/// approves it. Holds ids, tiers and policies, never a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRecord {
    /// Random id (UUID).
    pub id: String,
    /// `account.delete`, `key.destroy`, `policy.apply` or `downgrade`.
    pub operation: String,
    /// The operation's parameters, JSON.
    pub request: String,
    /// One line for the approver.
    pub summary: String,
    /// Who asked (identity name).
    pub requested_by: String,
    /// The asking credential's id (never the same one approves).
    pub requested_credential: String,
    /// When asked, unix ms.
    pub created_ms: i64,
    /// Approvable until, unix ms.
    pub expires_ms: i64,
    /// `pending` or `approved`.
    pub state: String,
    /// Who approved.
    pub approved_by: Option<String>,
    /// The approving credential's id.
    pub approved_credential: Option<String>,
    /// When approved, unix ms.
    pub approved_ms: Option<i64>,
}

/// Counts shown by `GET /v1/accounts/{account}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccountStats {
    /// Distinct shard ids of the account.
    pub shard_count: i64,
    /// Shard versions whose wrapped DEK lives on a backend other than the given one.
    pub versions_elsewhere: i64,
}

/// One immutable stored shard version (the envelope plus its metadata).
///
/// Holds only ciphertext and a wrapped key, so `Debug` is safe to derive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardVersionRow {
    /// Account id.
    pub account: String,
    /// Shard id.
    pub shard: String,
    /// Version, starting at 1.
    pub version: Version,
    /// Envelope format version (1 or 2; FORMAT.md §1).
    pub format_version: i16,
    /// Backend instance name that wrapped the DEK.
    pub backend: String,
    /// Backend key reference (keyring id, KMS key ARN, HSM key label).
    pub key_ref: String,
    /// Backend key version.
    pub key_version: i64,
    /// The wrapped data key.
    pub wrapped_dek: Vec<u8>,
    /// The 96-bit AES-GCM nonce of the shard seal.
    pub nonce: Vec<u8>,
    /// Shard ciphertext followed by the 16-byte GCM tag.
    pub ciphertext: Vec<u8>,
    /// Format 2: the 32-byte commitment to the data key (FORMAT.md §3a); format 1: `None`.
    /// Never changed by a re-wrap.
    pub key_commitment: Option<Vec<u8>>,
    /// Creation time, unix milliseconds.
    pub created_at: i64,
    /// Token identity (never the token) that wrote it.
    pub created_by: String,
}

/// A page entry of `GET /v1/accounts/{account}/shards`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSummary {
    /// Shard id.
    pub shard: String,
    /// Highest stored version.
    pub latest_version: Version,
    /// Backend of the latest version.
    pub backend: String,
}

/// A sealed audit event, as stored. `tag` is HMAC-SHA256 over the canonical encoding of
/// every other field (see FORMAT.md); `prev_tag` is the tag of `seq - 1` in the same chain
/// (32 zero bytes for `seq == 1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Chain id (one per gateway process).
    pub chain_id: String,
    /// Position in the chain, starting at 1.
    pub seq: i64,
    /// Event time, unix milliseconds.
    pub ts_ms: i64,
    /// Request id.
    pub request_id: String,
    /// Token identity (its configured name), or `anonymous`.
    pub actor: String,
    /// What was attempted, e.g. `shard.get`.
    pub action: String,
    /// Account id, if any.
    pub account: Option<String>,
    /// Shard id, if any.
    pub shard: Option<String>,
    /// Shard version, if any.
    pub version: Option<i64>,
    /// Backend instance, if any.
    pub backend: Option<String>,
    /// `ok` or an error code.
    pub outcome: String,
    /// Free text without secrets.
    pub detail: String,
    /// HMAC of the credential's token id under the deployment's audit key (never the token
    /// id itself), when a credential was presented.
    pub credential: Option<String>,
    /// Tag of the previous event of the chain.
    pub prev_tag: Vec<u8>,
    /// HMAC-SHA256 tag of this event.
    pub tag: Vec<u8>,
}

/// An archived audit segment as recorded in `audit_segments`: a contiguous range of one
/// chain's events, written to the archive sink and read back, whose rows then left the hot
/// table (docs/audit-archive.md; the object and manifest formats are in FORMAT.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSegment {
    /// Chain id.
    pub chain_id: String,
    /// Seq of the first event.
    pub first_seq: i64,
    /// Seq of the last event.
    pub last_seq: i64,
    /// Oldest event time in the segment (unix milliseconds).
    pub min_ts_ms: i64,
    /// Newest event time in the segment (unix milliseconds).
    pub max_ts_ms: i64,
    /// `prev_tag` of the first event (32 zero bytes when it starts the chain).
    pub prev_tag: Vec<u8>,
    /// Tag of the last event.
    pub last_tag: Vec<u8>,
    /// SHA-256 over the events' tags, in seq order.
    pub tags_sha256: Vec<u8>,
    /// Key of the segment object in the sink.
    pub object_key: String,
    /// SHA-256 of the (compressed) segment object.
    pub object_sha256: Vec<u8>,
    /// Size of the segment object.
    pub object_bytes: i64,
    /// Key of the manifest object in the sink.
    pub manifest_key: String,
    /// SHA-256 of the manifest object.
    pub manifest_sha256: Vec<u8>,
    /// SHA-256 of the chain's previous manifest (32 zero bytes for the first segment).
    pub prev_manifest_sha256: Vec<u8>,
    /// When it was recorded (unix milliseconds).
    pub archived_ms: i64,
}

impl AuditSegment {
    /// Events in the segment.
    pub fn count(&self) -> i64 {
        self.last_seq - self.first_seq + 1
    }
}

/// An API token kept in the database: its hash, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// First 16 hex digits of the token's SHA-256 (what `token revoke` names).
    pub token_id: String,
    /// Identity recorded in the audit log.
    pub name: String,
    /// Lower-case hex SHA-256 of the token.
    pub sha256: String,
    /// Scope names (`*` = all).
    pub scopes: Vec<String>,
    /// Exact-byte account prefix the token is restricted to.
    pub account_prefix: Option<String>,
    /// Creation time, unix milliseconds.
    pub created_ms: i64,
    /// Expiry, unix milliseconds (`None`: never).
    pub expires_ms: Option<i64>,
}

/// A revoked token id (of a database or config-file token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRevocation {
    /// The token id.
    pub token_id: String,
    /// When, unix milliseconds.
    pub revoked_ms: i64,
    /// Why, as the operator gave it (no secret).
    pub reason: String,
}

/// Builds the audit record of a delete once the transaction knows how many versions it
/// destroyed (the count is part of the audited detail).
pub type AuditForCount<'a> = &'a (dyn Fn(i64) -> AuditRecord + Send + Sync);

/// Result of a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeleteOutcome {
    /// Distinct shard ids removed.
    pub shards: i64,
    /// Shard versions removed.
    pub versions: i64,
}

/// The stored first answer of a write made with an `Idempotency-Key`.
///
/// `(scope, key)` is unique: `scope` is the caller identity + method + path (built by the
/// gateway), so two identities' keys never collide. `body_json` is the answer's JSON body;
/// it never carries shard bytes (put and delete answers carry none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// Caller identity, method and path.
    pub scope: String,
    /// The client's `Idempotency-Key`.
    pub key: String,
    /// SHA-256 of the request (so a reuse with another request is refused).
    pub request_hash: Vec<u8>,
    /// HTTP status of the first answer.
    pub status: i32,
    /// JSON body of the first answer.
    pub body_json: String,
    /// When it was stored, unix milliseconds.
    pub created_at: i64,
}

/// An idempotency record to store with a write, in the same transaction.
///
/// A record of the same `(scope, key)` created before `expired_before_ms` is expired: it is
/// replaced. Otherwise the write is not made and the stored record is returned
/// ([`Idempotent::Replay`]). On PostgreSQL the record is inserted first in the transaction,
/// so a concurrent request with the same key waits for the first one's commit (or rollback)
/// and then replays its answer (or proceeds); on SQLite writers are serialised anyway.
#[derive(Debug, Clone, Copy)]
pub struct IdempotentWrite<'a> {
    /// The record (for a delete, rebuilt by
    /// [`Store::delete_shard_idempotent`](crate::Store::delete_shard_idempotent)'s closure once
    /// the count is known).
    pub record: &'a IdempotencyRecord,
    /// Records older than this (unix milliseconds) no longer count.
    pub expired_before_ms: i64,
}

/// Builds a delete's idempotency record once the transaction knows the destroyed count.
pub type IdempotencyForCount<'a> = &'a (dyn Fn(i64) -> IdempotencyRecord + Send + Sync);

/// Builds an account delete's idempotency record once the transaction knows its outcome.
pub type IdempotencyForOutcome<'a> = &'a (dyn Fn(DeleteOutcome) -> IdempotencyRecord + Send + Sync);

/// Builds the audit records of the versions a write pruned (ascending), one per version,
/// chained after the write's own record.
pub type AuditForPruned<'a> = &'a (dyn Fn(&[i64]) -> Vec<AuditRecord> + Send + Sync);

/// Builds a write's idempotency record once the transaction knows what it pruned.
pub type IdempotencyForPruned<'a> = &'a (dyn Fn(&[i64]) -> IdempotencyRecord + Send + Sync);

/// Version retention applied by a shard write, in its transaction: after the new version is
/// inserted, every version of the shard but the newest `keep` is deleted (crypto-shredded),
/// where `keep` is the account's `keep_versions`, or `default_keep` when the account sets
/// none; 0 keeps every version. Each pruned version gets its own audit event.
#[derive(Clone, Copy)]
pub struct Retention<'a> {
    /// Versions kept when the account sets none (0 = every version).
    pub default_keep: i64,
    /// The audit records of the pruned versions.
    pub audit: AuditForPruned<'a>,
    /// With an idempotency key: the record to store, rebuilt with the pruned versions.
    pub idem: Option<IdempotencyForPruned<'a>>,
}

impl std::fmt::Debug for Retention<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retention")
            .field("default_keep", &self.default_keep)
            .finish_non_exhaustive()
    }
}

/// A change of an account's `keep_versions` made with
/// [`Store::put_account_with_retention`](crate::Store::put_account_with_retention).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepVersions {
    /// Leave it as it is (a new account gets `None`: the gateway default).
    Unchanged,
    /// Set it: `Some(n)` (0 = every version), or `None` to follow the gateway default.
    Set(Option<i64>),
}

/// What a put sets of an account's facts (the tier it asked for, its attributes), beside its
/// tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FactsUpdate<'a> {
    /// Leave them as they are (a new account: none).
    #[default]
    Unchanged,
    /// Set both.
    Set {
        /// The tier asked for.
        requested_tier: &'a str,
        /// The attributes, a canonical JSON object.
        attributes: &'a str,
    },
}

/// What an account's tier must be for [`Store::put_account_expecting`](crate::Store::put_account_expecting)
/// to write: the precondition that makes a decision taken on a read of the tier (a downgrade
/// check) hold at the write. Checked in the write's transaction, with the row locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedTier<'a> {
    /// Whatever it is (or no account yet): no precondition.
    Any,
    /// The account does not exist yet (the put creates it).
    Absent,
    /// The account exists with this tier.
    Is(&'a str),
}

impl ExpectedTier<'_> {
    /// Whether the account's tier now (`None`: no account) meets the precondition.
    pub fn holds(&self, current: Option<&str>) -> bool {
        match self {
            ExpectedTier::Any => true,
            ExpectedTier::Absent => current.is_none(),
            ExpectedTier::Is(tier) => current == Some(*tier),
        }
    }
}

/// Outcome of a write made with an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Idempotent<T> {
    /// The write (and its record, and its audit event) committed.
    Done(T),
    /// A live record of the same key exists: nothing was written; this is the first answer.
    Replay(IdempotencyRecord),
}
