//! Use cases: what one request or job does, composed from the domain, the store and the
//! backends. Handlers in [`crate::http`] call these; nothing here names HTTP.

pub mod accounts;
pub mod approvals;
pub mod audit_archive;
pub mod audit_expire;
pub mod audit_search;
pub mod breakers;
pub mod delete;
#[cfg(feature = "fault-injection")]
pub mod faults;
pub mod integrity;
pub mod keys_admin;
pub mod list;
pub mod migrate;
pub mod policy;
pub mod read;
pub mod retier;
pub mod settings;
pub mod state;
mod stored;
pub mod write;
pub mod write_group;
