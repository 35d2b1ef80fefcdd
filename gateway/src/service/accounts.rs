//! Accounts (`/v1/accounts/{account}`): create one or change its tier and retention ([`put`],
//! which starts the re-wrap job when the new tier moves it to another backend, and refuses a
//! move that lowers its protection unless an admin confirms it), read one
//! ([`get`]), crypto-shred one with every shard version ([`delete`]); and where the policy
//! places an account's new versions ([`placement_of`]), which the shard writes share.

use super::state::Services;
use crate::domain::audit::{Auditor, Event, Origin};
use crate::domain::error::DomainError;
use crate::domain::ids::AccountId;
use crate::domain::protection::{is_downgrade, Placed};
use shardgate_policy::{Attributes, Derived, Placement};
use shardgate_store::{
    AccountRecord, AccountStats, DeleteOutcome, ExpectedTier, FactsUpdate, IdempotencyForOutcome,
    IdempotencyRecord, Idempotent, KeepVersions, MigrationSelector, StoreError,
};
use std::time::Duration;
use tracing::Instrument as _;

/// Where the policy places new versions of this account's shards. A tier this replica does
/// not serve (an account created through a replica already on a newer policy version) makes
/// it read the database's newest version first.
pub async fn placement_of(
    state: &Services,
    record: &AccountRecord,
) -> Result<Placement, DomainError> {
    state
        .policy
        .place_fresh(&record.account, &record.tier)
        .await
        .map_err(|_| DomainError::Internal("the account's tier is no longer declared".into()))
}

/// An account's effective `keep_versions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Versions kept per shard (`0`: all).
    pub keep_versions: u32,
    /// Whether the account sets it (else the gateway's `[retention] keep_versions`).
    pub from_account: bool,
}

/// The retention `record` gets.
pub fn retention_of(state: &Services, record: &AccountRecord) -> Retention {
    match record.keep_versions.and_then(|k| u32::try_from(k).ok()) {
        Some(k) => Retention {
            keep_versions: k,
            from_account: true,
        },
        None => default_retention(state),
    }
}

fn default_retention(state: &Services) -> Retention {
    Retention {
        keep_versions: state.retention.keep_versions,
        from_account: false,
    }
}

/// An existing account and the backend the policy picks for it now.
pub async fn placed(
    state: &Services,
    account: &AccountId,
) -> Result<(AccountRecord, Placement), DomainError> {
    let record = state
        .store
        .get_account(account)
        .await?
        .ok_or_else(|| DomainError::AccountNotFound("no such account".into()))?;
    let placement = placement_of(state, &record).await?;
    Ok((record, placement))
}

/// An account as a read shows it.
#[derive(Debug)]
pub struct AccountView {
    /// The row.
    pub record: AccountRecord,
    /// Where its new versions go now.
    pub placement: Placement,
    /// Its shard count and the versions still on another backend.
    pub stats: AccountStats,
    /// Its effective retention.
    pub retention: Retention,
}

/// Read an account.
pub async fn get(state: &Services, account: &AccountId) -> Result<AccountView, DomainError> {
    let (record, placement) = placed(state, account).await?;
    let stats = state
        .store
        .account_stats(account, &placement.backend)
        .await?;
    let retention = retention_of(state, &record);
    Ok(AccountView {
        record,
        placement,
        stats,
        retention,
    })
}

/// What a put says about lowering the account's protection
/// ([`crate::domain::protection`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DowngradeConsent {
    /// The request does not ask (`allow_downgrade` absent or false): a downgrade is refused
    /// (`downgrade_refused`).
    NotAsked,
    /// The request asks, but the caller lacks `admin`: a downgrade is `forbidden`.
    AskedWithoutAdmin,
    /// An admin asks: a downgrade goes ahead (its event's detail names it).
    Granted,
}

impl DowngradeConsent {
    /// The consent of a request that asks (`allow_downgrade`) or not, by a caller that holds
    /// `admin` or not.
    pub fn of(asked: bool, admin: bool) -> Self {
        match (asked, admin) {
            (false, _) => DowngradeConsent::NotAsked,
            (true, false) => DowngradeConsent::AskedWithoutAdmin,
            (true, true) => DowngradeConsent::Granted,
        }
    }
}

/// A create or a change of an account.
pub struct PutAccount<'a> {
    /// Account id.
    pub account: &'a AccountId,
    /// The tier it asks for (must be declared); the policy's tier rules may put it in another
    /// by its attributes.
    pub tier: &'a str,
    /// Its attributes, replacing what it had (`None`: unchanged).
    pub attributes: Option<Attributes>,
    /// Absent: unchanged; `Some(None)`: follow the gateway's setting; `Some(Some(k))`: keep `k`.
    pub keep_versions: Option<Option<u32>>,
    /// Whether a tier change that lowers the account's protection may go ahead.
    pub downgrade: DowngradeConsent,
    /// The caller's `account.put` event (backend and detail are set here).
    pub event: Event,
    /// Who asks, for the migration job a tier change starts.
    pub origin: Origin,
}

/// What a put did.
#[derive(Debug)]
pub struct AccountPut {
    /// Created now (else changed).
    pub created: bool,
    /// The tier it is in now: the one asked for, or a tier rule's.
    pub tier: String,
    /// Why: `asked for`, or the tier rule that decided.
    pub tier_rule: String,
    /// Where its new versions go now.
    pub backend: String,
    /// The re-wrap job a tier change started, when versions live on another backend.
    pub migration_job: Option<String>,
    /// Its effective retention.
    pub retention: Retention,
}

/// Tries of a put whose account changed between its read and its write (each try reads the
/// tier again and judges the change again).
const PUT_TRIES: usize = 5;

/// Create an account or change its tier and retention, audited in the write's transaction.
///
/// A tier change that lowers the account's protection (its new placement's backend kind ranks
/// below the current one's) goes ahead only with [`DowngradeConsent::Granted`]; else it is
/// refused, audited, and nothing changes. The write carries the tier the judgement was made
/// on as its precondition ([`ExpectedTier`]), so a concurrent tier change makes it read and
/// judge again instead of letting a downgrade through.
pub async fn put(state: &Services, req: PutAccount<'_>) -> Result<AccountPut, DomainError> {
    let account = req.account;
    // A tier this replica does not serve yet may be in a newer policy version: `place_fresh`
    // reads the database's head before refusing.
    state
        .policy
        .place_fresh(account, req.tier)
        .await
        .map_err(|_| DomainError::UnknownTier)?;
    let (keep, keep_detail) = match req.keep_versions {
        None => (KeepVersions::Unchanged, String::new()),
        Some(k) => (
            KeepVersions::Set(k.map(i64::from)),
            format!(
                " keep_versions={}",
                k.map_or_else(|| "default".to_string(), |k| k.to_string())
            ),
        ),
    };
    for _ in 0..PUT_TRIES {
        let current = state.store.get_account(account).await?;
        let attributes = match (&req.attributes, &current) {
            (Some(a), _) => a.clone(),
            (None, Some(r)) => stored_attributes(r),
            (None, None) => Attributes::default(),
        };
        let derived = state
            .policy
            .current()
            .policy
            .derive_tier(req.tier, &attributes);
        let placement = state
            .policy
            .place_fresh(account, &derived.tier)
            .await
            .map_err(|_| DomainError::UnknownTier)?;
        let downgrade = match &current {
            Some(record) if record.tier != derived.tier => {
                guard_downgrade(state, &req, &derived.tier, record, &placement).await?
            }
            _ => None,
        };
        let expected = current
            .as_ref()
            .map_or(ExpectedTier::Absent, |r| ExpectedTier::Is(&r.tier));
        let downgrade_detail = downgrade.map_or_else(String::new, |d| format!(" downgrade={d}"));
        let facts_detail = if derived.tier == req.tier && attributes.is_empty() {
            String::new()
        } else {
            format!(
                " requested={} by={} attributes={}",
                req.tier,
                derived.rule,
                attributes.canonical_json()
            )
        };
        let event = req
            .event
            .clone()
            .backend(&placement.backend)
            .detail(format!(
                "tier={}{keep_detail}{downgrade_detail}{facts_detail}",
                derived.tier
            ));
        let json = attributes.canonical_json();
        let facts = FactsUpdate::Set {
            requested_tier: req.tier,
            attributes: &json,
        };
        let mut guard = state.audit.lock().await?;
        let record = guard.begin(&event);
        let result = state
            .store
            .put_account_expecting(
                account,
                &derived.tier,
                expected,
                keep,
                facts,
                crate::now_ms(),
                &record,
            )
            .await;
        guard.finish(Some(&record), &result).await;
        match result {
            Err(StoreError::AccountChanged) => continue,
            result => {
                let previous = result?;
                let done = Committed {
                    placement,
                    derived,
                    before: current.as_ref(),
                    previous,
                };
                return put_done(state, &req, done).await;
            }
        }
    }
    Err(DomainError::Conflict(
        "the account's tier kept changing during the request; retry".into(),
    ))
}

/// The attributes stored with `record` (none when the row holds what this build cannot read,
/// which only a hand-edited row could).
pub fn stored_attributes(record: &AccountRecord) -> Attributes {
    Attributes::from_json(&record.attributes).unwrap_or_default()
}

/// A committed put: where it placed the account, by which tier and rule, and what was there.
struct Committed<'a> {
    placement: Placement,
    derived: Derived,
    before: Option<&'a AccountRecord>,
    previous: Option<String>,
}

/// What a committed put answers: the migration job its tier change started, its retention.
async fn put_done(
    state: &Services,
    req: &PutAccount<'_>,
    done: Committed<'_>,
) -> Result<AccountPut, DomainError> {
    let Committed {
        placement,
        derived,
        before,
        previous,
    } = done;
    let migration_job = match previous.as_deref() {
        Some(old_tier) => {
            migrate_if_moved(
                state,
                req.account,
                old_tier,
                &placement.backend,
                &req.origin,
            )
            .await?
        }
        None => None,
    };
    let retention = match req.keep_versions {
        Some(Some(k)) => Retention {
            keep_versions: k,
            from_account: true,
        },
        Some(None) => default_retention(state),
        // Unchanged by this put: what the account had when the put read it.
        None => before.map_or_else(|| default_retention(state), |r| retention_of(state, r)),
    };
    Ok(AccountPut {
        created: previous.is_none(),
        tier: derived.tier,
        tier_rule: derived.rule,
        backend: placement.backend,
        migration_job,
        retention,
    })
}

/// The kind of a configured backend (`unknown` for a name no backend has, which the
/// downgrade rule treats as it treats any kind it does not know).
fn kind_of(state: &Services, backend: &str) -> &'static str {
    state.backend(backend).map_or("unknown", |b| b.kind())
}

/// Judge a tier change of `record` to `placement` by the downgrade rule: `Ok(None)` when it
/// does not lower the account's protection, `Ok(Some("<from> -> <to>"))` for a downgrade an
/// admin confirmed; else the refusal, audited (`downgrade_refused`, or `forbidden` when the
/// request asked without `admin`).
async fn guard_downgrade(
    state: &Services,
    req: &PutAccount<'_>,
    tier: &str,
    record: &AccountRecord,
    placement: &Placement,
) -> Result<Option<String>, DomainError> {
    let from_backend = state.policy.place(req.account, &record.tier).ok();
    let from = from_backend.as_ref().map_or(Placed::Unknown, |p| {
        Placed::Kind(kind_of(state, &p.backend))
    });
    let to = kind_of(state, &placement.backend);
    if !is_downgrade(from, to) {
        return Ok(None);
    }
    let change = format!(
        "from tier {} (backend {}, {from}) to tier {} (backend {}, {to})",
        record.tier,
        from_backend.as_ref().map_or("none", |p| p.backend.as_str()),
        tier,
        placement.backend,
    );
    let err = match req.downgrade {
        DowngradeConsent::Granted => return Ok(Some(format!("{from}->{to}"))),
        DowngradeConsent::NotAsked => DomainError::DowngradeRefused(format!(
            "moving the account {change} lowers its protection: refused, nothing changed; to \
             move it anyway, repeat the request with \"allow_downgrade\": true and a \
             credential that holds the admin scope"
        )),
        DowngradeConsent::AskedWithoutAdmin => DomainError::Forbidden(format!(
            "moving the account {change} lowers its protection: \"allow_downgrade\" needs \
             a credential that holds the admin scope"
        )),
    };
    let mut event = req
        .event
        .clone()
        .backend(&placement.backend)
        .detail(format!("tier={} refused: downgrade {from}->{to}", tier));
    event.outcome = err.outcome().to_string();
    if let Err(audit_err) = state.audit.record(event).await {
        tracing::warn!(
            code = audit_err.outcome(),
            "the audit event of a refused downgrade was not recorded"
        );
    }
    Err(err)
}

/// A tier change that moves the account to another backend starts its migration job, when
/// any of its versions live elsewhere; the job's id.
async fn migrate_if_moved(
    state: &Services,
    account: &AccountId,
    old_tier: &str,
    backend: &str,
    origin: &Origin,
) -> Result<Option<String>, DomainError> {
    let before = state
        .policy
        .place(account, old_tier)
        .map(|p| p.backend)
        .ok();
    if before.as_deref() == Some(backend) {
        return Ok(None);
    }
    let stats = state.store.account_stats(account, backend).await?;
    if stats.versions_elsewhere == 0 {
        return Ok(None);
    }
    let selector = MigrationSelector {
        account: Some(account.to_string()),
        ..Default::default()
    };
    // The snapshot of a large account can outlast the request's deadline: create the job in
    // the background and answer with its id now.
    let id = uuid::Uuid::new_v4().to_string();
    let (st, job_id, origin) = (state.clone(), id.clone(), origin.clone());
    // In the request's span: its log lines keep the request id.
    let mut creating = tokio::spawn(
        async move {
            if let Err(e) = super::migrate::start_with_id(&st, &job_id, selector, &origin).await
            {
                tracing::error!(job = %job_id, error = %e, "the migration job of a tier change could not be created");
            }
        }
        .in_current_span(),
    );
    // Usually done in milliseconds: wait a little so the job exists when the answer names
    // it; a huge snapshot goes on after the answer.
    let _ = tokio::time::timeout(Duration::from_millis(1000), &mut creating).await;
    Ok(Some(id))
}

/// What an account delete destroyed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountDestroyed {
    /// Shards and versions destroyed.
    pub outcome: DeleteOutcome,
    /// Its audit event id (`<chain>:<seq>`).
    pub audit_event: String,
}

/// What an account delete did.
#[derive(Debug)]
pub enum AccountDeleted {
    /// Destroyed now.
    Destroyed(AccountDestroyed),
    /// A live record of the same `Idempotency-Key` answered first: nothing was deleted.
    Replay(IdempotencyRecord),
}

/// An account delete with an `Idempotency-Key`: its record commits with the delete.
pub struct IdempotentAccountDelete<'a> {
    /// The record of an answer (the HTTP layer serialises the answer into it).
    pub record: &'a (dyn Fn(&AccountDestroyed) -> IdempotencyRecord + Send + Sync),
    /// Records created before this (unix milliseconds) no longer count.
    pub expired_before_ms: i64,
}

/// Crypto-shred every shard version of the account, then the account, with `event` (its
/// detail says how many versions) in one transaction.
pub async fn delete(
    state: &Services,
    account: &AccountId,
    event: &Event,
    idem: Option<IdempotentAccountDelete<'_>>,
) -> Result<AccountDeleted, DomainError> {
    let mut guard = state.audit.lock().await?;
    guard.arm();
    let seal = |n: i64| guard.seal(&event.clone().detail(format!("destroyed_versions={n}")));
    let destroyed = |outcome: DeleteOutcome| AccountDestroyed {
        outcome,
        audit_event: Auditor::event_id(&seal(outcome.versions)),
    };
    let idem_record = |o: DeleteOutcome| match &idem {
        Some(i) => (i.record)(&destroyed(o)),
        None => unreachable!("only called with an idempotency key"),
    };
    let write = idem.as_ref().map(|i| {
        (
            i.expired_before_ms,
            &idem_record as IdempotencyForOutcome<'_>,
        )
    });
    let result = state
        .store
        .delete_account_idempotent(account, &seal, write)
        .await;
    let none = DeleteOutcome {
        shards: 0,
        versions: 0,
    };
    let (result, replay) = match result {
        Ok(Idempotent::Done(o)) => (Ok(o), None),
        Ok(Idempotent::Replay(rec)) => (Ok(none), Some(rec)),
        Err(e) => (Err(e), None),
    };
    let record = match (&result, &replay) {
        (Ok(o), None) => Some(seal(o.versions)),
        _ => None,
    };
    guard.finish(record.as_ref(), &result).await;
    if let Some(rec) = replay {
        return Ok(AccountDeleted::Replay(rec));
    }
    Ok(AccountDeleted::Destroyed(AccountDestroyed {
        outcome: result?,
        audit_event: record.as_ref().map(Auditor::event_id).unwrap_or_default(),
    }))
}
