//! `[telemetry]`: optional export of request spans over OTLP (docs/configuration.md,
//! "Telemetry"). Off by default: no exporter, no span built for export.

use serde::{Deserialize, Serialize};

/// Span export.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Base URL of an OTLP/HTTP collector (`http://127.0.0.1:4318`): spans are posted, as
    /// protobuf, to `<otlp_endpoint>/v1/traces`. Unset: nothing is exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
}

impl TelemetryConfig {
    /// Whether nothing is configured (the section is then left out when written).
    pub fn is_empty(&self) -> bool {
        self.otlp_endpoint.is_none()
    }

    /// The URL spans are posted to, when export is on.
    pub fn traces_url(&self) -> Option<String> {
        self.otlp_endpoint
            .as_deref()
            .map(|e| format!("{}/v1/traces", e.trim_end_matches('/')))
    }

    /// `otlp_endpoint` is a plain `http://host[:port][/path]` URL: the exporter speaks
    /// OTLP/HTTP without TLS, to a collector or agent beside the gateway.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let Some(e) = &self.otlp_endpoint else {
            return Ok(());
        };
        let rest = e.strip_prefix("http://").unwrap_or_default();
        let host = rest.split('/').next().unwrap_or_default();
        // Userinfo (`user:password@`) is refused: the exporter has no credentials to send,
        // and the value would otherwise travel into errors and the exporter's own logs.
        // The error never quotes the value, which could hold such a password.
        if host.is_empty()
            || host.contains('@')
            || e.bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(
                "telemetry.otlp_endpoint must be an http:// URL of an OTLP/HTTP collector without credentials (e.g. http://127.0.0.1:4318)"
                    .to_string(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::TelemetryConfig;

    fn with(endpoint: &str) -> TelemetryConfig {
        TelemetryConfig {
            otlp_endpoint: Some(endpoint.into()),
        }
    }

    #[test]
    fn otlp_endpoint_is_a_plain_http_url_and_spans_go_to_v1_traces() {
        assert_eq!(TelemetryConfig::default().traces_url(), None);
        assert_eq!(TelemetryConfig::default().validate(), Ok(()));
        for (e, url) in [
            ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
            ("http://collector:4318/", "http://collector:4318/v1/traces"),
            ("http://gw/otlp", "http://gw/otlp/v1/traces"),
        ] {
            assert_eq!(with(e).validate(), Ok(()), "{e}");
            assert_eq!(with(e).traces_url().as_deref(), Some(url));
        }
        for e in [
            "https://collector:4318",
            "collector:4318",
            "http://",
            "http:// x",
            "",
        ] {
            assert!(with(e).validate().is_err(), "{e}");
        }
    }

    #[test]
    fn an_endpoint_with_credentials_is_refused_without_quoting_them() {
        let err = with("http://otel:hunter2@collector:4318").validate();
        let err = err.err().unwrap_or_default();
        assert!(err.contains("without credentials"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}
