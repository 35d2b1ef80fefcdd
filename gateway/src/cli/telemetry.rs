//! OTLP span export (`[telemetry] otlp_endpoint`): a batch exporter posting protobuf to
//! `<endpoint>/v1/traces` from its own thread, and the `tracing` layer that turns spans into
//! OpenTelemetry spans. Installed only when configured: without it no span is built for
//! export. A fresh trace's root span takes the trace id the request's log lines already
//! show ([`crate::domain::trace::with_root_trace_id`], read by [`GatewayIds`]).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracerProvider};
use opentelemetry_sdk::Resource;

/// The running exporter: flush it when the command ends.
pub(crate) struct Exporter {
    provider: SdkTracerProvider,
}

/// The layer [`Exporter::start`] hands to the subscriber.
type OtelLayer = tracing_opentelemetry::OpenTelemetryLayer<
    tracing_subscriber::layer::Layered<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>,
    opentelemetry_sdk::trace::Tracer,
>;

impl Exporter {
    /// Start exporting to `url` (the full `/v1/traces` URL).
    pub(crate) fn start(url: &str) -> Result<(Self, OtelLayer), String> {
        use opentelemetry_otlp::{Protocol, WithExportConfig as _};
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .build()
            .map_err(|e| e.to_string())?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_id_generator(GatewayIds::default())
            .with_resource(
                Resource::builder()
                    .with_service_name("shardgate")
                    .with_attribute(opentelemetry::KeyValue::new(
                        "service.version",
                        env!("CARGO_PKG_VERSION"),
                    ))
                    .build(),
            )
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("shardgate"));
        Ok((Self { provider }, layer))
    }

    /// Export what is still queued, then stop.
    pub(crate) fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("shardgate: span exporter shutdown: {e}");
        }
    }
}

/// Random ids, except for the root span of a request that started a fresh trace: that
/// one takes the trace id decided for the request.
#[derive(Debug, Default)]
struct GatewayIds(RandomIdGenerator);

impl IdGenerator for GatewayIds {
    fn new_trace_id(&self) -> opentelemetry::trace::TraceId {
        crate::domain::trace::take_root_trace_id().map_or_else(
            || self.0.new_trace_id(),
            |t| opentelemetry::trace::TraceId::from_bytes(t.0),
        )
    }

    fn new_span_id(&self) -> opentelemetry::trace::SpanId {
        self.0.new_span_id()
    }
}
