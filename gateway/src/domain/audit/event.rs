//! An audit event before it is placed in a chain, and who caused it ([`Origin`]).

use crate::domain::error::Outcome;
use crate::domain::trace::TraceId;

/// An event before it is placed in the chain.
#[derive(Debug, Clone, Default)]
pub struct Event {
    /// Request id.
    pub request_id: String,
    /// Token identity name, or `anonymous`.
    pub actor: String,
    /// e.g. `shard.get`.
    pub action: String,
    /// Account.
    pub account: Option<String>,
    /// Shard.
    pub shard: Option<String>,
    /// Version.
    pub version: Option<i64>,
    /// Backend.
    pub backend: Option<String>,
    /// `ok` or an error code.
    pub outcome: String,
    /// Secret-free detail.
    pub detail: String,
    /// HMAC of the presented credential's token id ([`crate::domain::auth::credential_id`]).
    pub credential: Option<String>,
    /// Event time; fixed when the event is made so re-sealing is deterministic.
    pub ts_ms: i64,
    /// The W3C trace of the request that caused the event; stored at the end of the detail
    /// as ` trace_id=<32 hex digits>` ([`Event::stored_detail`]).
    pub trace_id: Option<TraceId>,
}

/// Who caused an operation: the identity, the request and the credential. Use cases that
/// audit on a caller's behalf take one, so that every event a request causes records its
/// credential (the CLI has none).
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// Identity name (`cli` for the command line).
    pub actor: String,
    /// Request id.
    pub request_id: String,
    /// The credential's [`crate::domain::auth::credential_id`], when a credential made the request.
    pub credential: Option<String>,
    /// The request's trace, when a request (not the command line) is the origin.
    pub trace_id: Option<TraceId>,
}

impl Origin {
    /// An operator at the command line: no credential, a fresh `cli-` request id.
    pub fn cli() -> Self {
        Self {
            actor: "cli".into(),
            request_id: format!("cli-{}", uuid::Uuid::new_v4().simple()),
            credential: None,
            trace_id: None,
        }
    }

    /// An event of this origin, stamped now.
    pub fn event(&self, action: &str) -> Event {
        let mut ev = Event::new(&self.request_id, &self.actor, action);
        ev.credential = self.credential.clone();
        ev.trace_id = self.trace_id;
        ev
    }
}

impl Event {
    /// An event stamped now.
    pub fn new(request_id: &str, actor: &str, action: &str) -> Self {
        Self {
            request_id: request_id.to_string(),
            actor: actor.to_string(),
            action: action.to_string(),
            outcome: "ok".to_string(),
            ts_ms: crate::now_ms(),
            ..Self::default()
        }
    }

    /// Set the account.
    pub fn account(mut self, a: &str) -> Self {
        self.account = Some(a.to_string());
        self
    }

    /// Set the shard.
    pub fn shard(mut self, s: &str) -> Self {
        self.shard = Some(s.to_string());
        self
    }

    /// Set the version.
    pub fn version(mut self, v: i64) -> Self {
        self.version = Some(v);
        self
    }

    /// Set the backend.
    pub fn backend(mut self, b: &str) -> Self {
        self.backend = Some(b.to_string());
        self
    }

    /// Set the outcome from an error (its code), or `ok`.
    pub fn outcome_of<T, E: Outcome>(mut self, r: &Result<T, E>) -> Self {
        self.outcome = match r {
            Ok(_) => "ok".to_string(),
            Err(e) => e.outcome().to_string(),
        };
        self
    }

    /// Set the detail.
    pub fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = d.into();
        self
    }

    /// The detail as stored (and covered by the chain's tag): the detail, then the trace id
    /// when the event has one, as `trace_id=<32 hex digits>` after a space (alone when the
    /// detail is empty). FORMAT.md, "Audit events".
    pub fn stored_detail(&self) -> String {
        match (&self.trace_id, self.detail.is_empty()) {
            (None, _) => self.detail.clone(),
            (Some(t), true) => format!("trace_id={t}"),
            (Some(t), false) => format!("{} trace_id={t}", self.detail),
        }
    }
}
