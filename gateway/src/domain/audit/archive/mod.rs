//! The audit archive (docs/audit-archive.md): a chain's older events leave the hot table as
//! segments in a write-once sink, and the chain stays one chain across the two tiers.
//!
//! - [`segment`]: the byte-exact object and manifest formats (FORMAT.md, "Audit segments");
//! - [`sink`]: the write-once stores they go to ([`DirSink`], the embedded default;
//!   [`S3Sink`], a bucket with optional Object Lock);
//! - [`walk`]: reading a chain's segments back from the sink, checking every byte;
//! - [`anchors`]: chain heads written to the sink at every checkpoint.
//!
//! Building, uploading and recording segments is a use case: `service::audit_archive`.

pub mod anchors;
pub mod s3;
pub mod segment;
pub mod sink;
pub mod walk;

pub use s3::{S3Sink, S3SinkConfig};
pub use segment::{Manifest, SegmentError};
pub use sink::{ArchiveSink, DirSink, Put, SinkError};
pub use walk::{archived_chains, walk_chain, ArchivedHead, WalkError, WalkFrom};

/// A sink and the key prefix of this deployment's objects in it.
#[derive(Clone, Copy)]
pub struct Archive<'a> {
    /// The sink.
    pub sink: &'a dyn ArchiveSink,
    /// Prefix of every key (empty, or ending with `/`).
    pub prefix: &'a str,
}
