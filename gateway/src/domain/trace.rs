//! W3C trace context (<https://www.w3.org/TR/trace-context/>): the trace a request belongs
//! to. A request's `traceparent` is continued when well-formed, otherwise a fresh trace is
//! started; its trace id is in every log line of the request and in its audit events, beside
//! the request id (which still names the request). When spans are exported (OTLP, `[telemetry]`),
//! the request's span is a child of the caller's span, or the root of the fresh trace.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

/// A trace id: 16 bytes, never all zero. Shown as 32 lower-case hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

impl TraceId {
    /// A fresh random trace id.
    pub fn random() -> Self {
        loop {
            let id: [u8; 16] = rand::random();
            if id != [0; 16] {
                return Self(id);
            }
        }
    }
}

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A request's place in a trace: its trace id, and the caller's span (id and flags) when the
/// request came with a well-formed `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace the request belongs to.
    pub trace_id: TraceId,
    /// The caller's span id and trace flags, when the trace was continued.
    pub parent: Option<([u8; 8], u8)>,
}

impl TraceContext {
    /// The trace of a request: the `traceparent` header's when it parses, else a fresh one.
    pub fn of_request(traceparent: Option<&[u8]>) -> Self {
        traceparent
            .and_then(parse_traceparent)
            .unwrap_or_else(|| Self {
                trace_id: TraceId::random(),
                parent: None,
            })
    }
}

/// `version "-" trace-id "-" parent-id "-" trace-flags`, lower-case hex. Version `00` must
/// be exactly 55 bytes; a later version may append fields after a `-` (the spec's rule for
/// versions it does not know); `ff` is invalid, as are all-zero ids.
pub fn parse_traceparent(v: &[u8]) -> Option<TraceContext> {
    let lower_hex = |s: &[u8]| {
        s.iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let (version, trace, parent, flags) = (&v[..2], &v[3..35], &v[36..52], &v[53..55]);
    if ![version, trace, parent, flags].into_iter().all(lower_hex) || version == b"ff" {
        return None;
    }
    if (version == b"00" && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    let mut flag = [0u8; 1];
    hex::decode_to_slice(trace, &mut trace_id).ok()?;
    hex::decode_to_slice(parent, &mut span_id).ok()?;
    hex::decode_to_slice(flags, &mut flag).ok()?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(TraceContext {
        trace_id: TraceId(trace_id),
        parent: Some((span_id, flag[0])),
    })
}

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether request spans are exported (set once, by the command line, when it installs the
/// OTLP exporter). Off: no span is built for export, no parent is set.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Note that spans are exported from now on.
pub fn set_exporting() {
    EXPORTING.store(true, Ordering::Relaxed);
}

thread_local! {
    /// The trace id the next root span built on this thread takes ([`with_root_trace_id`]).
    static NEXT_ROOT: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// Run `f` (which builds a root span, synchronously, on this thread) so that the exporter's
/// id generator gives that span `id` ([`take_root_trace_id`]): a fresh trace's spans then carry
/// the trace id the log lines and audit events already show.
pub fn with_root_trace_id<T>(id: TraceId, f: impl FnOnce() -> T) -> T {
    NEXT_ROOT.with(|c| c.set(Some(id)));
    let out = f();
    NEXT_ROOT.with(|c| c.set(None));
    out
}

/// The trace id [`with_root_trace_id`] set for this thread, taken (for the exporter's id
/// generator; `None` elsewhere: a random id then).
pub fn take_root_trace_id() -> Option<TraceId> {
    NEXT_ROOT.with(Cell::take)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_well_formed_traceparent_is_continued() {
        let t = parse_traceparent(GOOD.as_bytes()).unwrap();
        assert_eq!(t.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            t.parent,
            Some(([0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7], 1))
        );
        // A later version may append fields.
        let later = format!("cc{}-what-ever", &GOOD[2..]);
        assert!(parse_traceparent(later.as_bytes()).is_some());
    }

    #[test]
    fn a_malformed_traceparent_starts_a_fresh_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad:?}");
            let fresh = TraceContext::of_request(Some(bad.as_bytes()));
            assert!(fresh.parent.is_none());
            assert_ne!(fresh.trace_id.0, [0; 16]);
        }
        let (a, b) = (
            TraceContext::of_request(None),
            TraceContext::of_request(None),
        );
        assert_ne!(a.trace_id, b.trace_id);
    }

    #[test]
    fn the_root_trace_id_is_taken_once_on_its_thread() {
        let id = TraceId([7; 16]);
        let got = with_root_trace_id(id, || (take_root_trace_id(), take_root_trace_id()));
        assert_eq!(got, (Some(id), None));
        assert_eq!(take_root_trace_id(), None);
    }
}
