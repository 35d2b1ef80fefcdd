//! What every operation of the OpenAPI document shares, added to each operation after the
//! handlers' own annotations: the request headers the middleware reads on every route
//! (`X-Request-Id`, `x-shardgate-deadline-ms`, `traceparent`), the headers on every answer (`X-Request-Id`,
//! `Cache-Control`, and `Retry-After` on 429 and 503), `Idempotent-Replayed` on writes that
//! take an `Idempotency-Key`, and one error response per status of DESIGN.md's table,
//! naming the codes it carries. Generated clients read all of these from the document.

use crate::http::api::{DEADLINE_HEADER, REQUEST_ID};
use crate::http::error::ErrorCode;
use axum::http::StatusCode;
use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Required, Response, ResponseBuilder};
use utoipa::Modify;

/// Routes served without a credential; they answer only the errors of [`OPEN_STATUSES`].
const OPEN_PATHS: &[&str] = &["/healthz", "/readyz", "/openapi.json"];

/// The error statuses a route without a credential can answer (middleware and fallbacks).
const OPEN_STATUSES: &[u16] = &[404, 405, 414, 429, 500, 504];

/// The header a replayed write answer carries.
const IDEMPOTENT_REPLAYED: &str = "Idempotent-Replayed";

/// Adds the shared headers and error responses to every operation.
pub(crate) struct SharedResponses;

impl Modify for SharedResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let open = OPEN_PATHS.contains(&path.as_str());
            for op in [
                item.get.as_mut(),
                item.put.as_mut(),
                item.post.as_mut(),
                item.delete.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                shared_operation(op, open);
            }
        }
    }
}

fn shared_operation(op: &mut Operation, open: bool) {
    let params = op.parameters.get_or_insert_with(Vec::new);
    let idempotent = params.iter().any(|p| p.name == "Idempotency-Key");
    for p in params.iter_mut().filter(|p| p.name == "Idempotency-Key") {
        p.schema = Some(string_schema(1, 128, Some("^[\\x20-\\x7E]+$")));
    }
    params.push(request_id_param());
    params.push(deadline_param());
    params.push(traceparent_param());
    for (status, response) in op.responses.responses.iter_mut() {
        if let RefOr::T(r) = response {
            common_headers(r);
            if idempotent && status.starts_with('2') {
                r.headers
                    .insert(IDEMPOTENT_REPLAYED.into(), replayed_header());
            }
        }
    }
    for status in error_statuses(open) {
        op.responses
            .responses
            .entry(status.as_str().to_string())
            .or_insert_with(|| error_response(status).into());
    }
}

/// The statuses of every code (or of [`OPEN_STATUSES`]), each once, in order.
fn error_statuses(open: bool) -> Vec<StatusCode> {
    let mut out: Vec<StatusCode> = ErrorCode::ALL.iter().map(|c| c.status()).collect();
    out.sort();
    out.dedup();
    if open {
        out.retain(|s| OPEN_STATUSES.contains(&s.as_u16()));
    }
    out
}

/// One status's error answer: the shared body, the codes it carries, the shared headers.
fn error_response(status: StatusCode) -> Response {
    let codes: Vec<&str> = ErrorCode::ALL
        .iter()
        .filter(|c| c.status() == status)
        .map(|c| c.as_str())
        .collect();
    let reason = status.canonical_reason().unwrap_or("error");
    let mut r = ResponseBuilder::new()
        .description(format!(
            "{reason}: `error.code` is one of {}",
            codes.join(", ")
        ))
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build();
    common_headers(&mut r);
    if ErrorCode::status_carries_retry_after(status) {
        r.headers.insert("Retry-After".into(), retry_after_header());
    }
    r
}

fn common_headers(r: &mut Response) {
    r.headers.insert(
        "X-Request-Id".into(),
        HeaderBuilder::new()
            .schema(string_schema(1, 64, Some(REQUEST_ID_PATTERN)))
            .description(Some(
                "the request's id: the caller's `X-Request-Id` when well-formed, else one the \
                 gateway made; it names the request in logs and audit events",
            ))
            .build(),
    );
    r.headers.insert(
        "Cache-Control".into(),
        HeaderBuilder::new()
            .schema(ObjectBuilder::new().schema_type(Type::String).build())
            .description(Some("always `no-store`: shard bytes must never be cached"))
            .build(),
    );
}

/// The request-id grammar of `api::is_valid_request_id`.
const REQUEST_ID_PATTERN: &str = "^[A-Za-z0-9._-]{1,64}$";

fn request_id_param() -> Parameter {
    ParameterBuilder::new()
        .name(REQUEST_ID)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "names the request in logs, audit events and the answer's `X-Request-Id`; one \
             that is not 1 to 64 of `[A-Za-z0-9._-]` is replaced by a fresh id",
        ))
        .schema(Some(string_schema(1, 64, Some(REQUEST_ID_PATTERN))))
        .build()
}

fn traceparent_param() -> Parameter {
    ParameterBuilder::new()
        .name("traceparent")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "W3C trace context: a well-formed one is continued (its trace id is logged and \
             audited beside the request id), anything else starts a fresh trace",
        ))
        // Version 00 is exactly 55 characters; later versions may append `-` fields.
        .schema(Some(string_schema(
            55,
            512,
            Some("^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-.*)?$"),
        )))
        .build()
}

fn deadline_param() -> Parameter {
    ParameterBuilder::new()
        .name(DEADLINE_HEADER)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "milliseconds the caller will wait: the gateway answers 504 `deadline_exceeded` \
             rather than work past it (it never extends `[timeouts] request_ms`)",
        ))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .minimum(Some(1))
                .build(),
        ))
        .build()
}

fn retry_after_header() -> Header {
    HeaderBuilder::new()
        .schema(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
                .minimum(Some(1))
                .build(),
        )
        .description(Some("seconds to wait before trying again"))
        .build()
}

fn replayed_header() -> Header {
    HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(Type::String).build())
        .description(Some(
            "`true` when this answer is the replay of an earlier request with the same \
             `Idempotency-Key`; absent otherwise",
        ))
        .build()
}

fn string_schema(min: usize, max: usize, pattern: Option<&str>) -> RefOr<utoipa::openapi::Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(min))
        .max_length(Some(max))
        .pattern(pattern)
        .build()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_status_in_the_authenticated_errors() {
        let statuses = error_statuses(false);
        for code in ErrorCode::ALL {
            assert!(statuses.contains(&code.status()), "{code:?}");
        }
    }

    #[test]
    fn open_routes_list_only_what_the_middleware_answers() {
        let open: Vec<u16> = error_statuses(true).iter().map(|s| s.as_u16()).collect();
        assert_eq!(open, OPEN_STATUSES);
    }

    #[test]
    fn only_429_and_503_carry_retry_after() {
        for status in error_statuses(false) {
            let r = error_response(status);
            let want = matches!(status.as_u16(), 429 | 503);
            assert_eq!(r.headers.contains_key("Retry-After"), want, "{status}");
            assert!(r.headers.contains_key("X-Request-Id"), "{status}");
        }
    }
}
