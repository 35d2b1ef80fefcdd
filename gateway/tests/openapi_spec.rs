//! The document served at `/openapi.json` is a valid OpenAPI document, as the ecosystem's own
//! checker (`openapi-spec-validator`, PyPI) sees it: generated clients start from it, and a
//! query parameter declared `in: path` (the utoipa `IntoParams` default) breaks them.
//! `scripts/test.sh` installs the validator and names its interpreter in
//! `SHARDGATE_TEST_OPENAPI_PYTHON`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::StatusCode;
use common::{StoreKind, Tokens};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_openapi_document_passes_openapi_spec_validator() {
    let Some(python) = common::require_env("SHARDGATE_TEST_OPENAPI_PYTHON") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(StoreKind::Sqlite, dir.path())
        .await
        .unwrap();
    let tokens = Tokens::new();
    let cfg = common::config(dir.path(), &url, &tokens);
    let (state, _) = shardgate::app::state::AppState::build(&cfg).await.unwrap();
    let app = shardgate::router(state);
    // Served without a credential, as clients and generators fetch it.
    let (status, doc) = common::call(&app, "", "GET", "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    // The query parameters are query parameters.
    for (path, name) in [
        ("/v1/accounts/{account}/shards", "after"),
        ("/v1/accounts/{account}/shards", "limit"),
        ("/v1/accounts/{account}/shards/{shard}", "version"),
    ] {
        let params = doc["paths"][path]["get"]["parameters"].as_array().unwrap();
        let p = params.iter().find(|p| p["name"] == name).unwrap();
        assert_eq!(p["in"], "query", "{path} {name}: {p}");
    }
    assert_shared_headers(&doc);
    let file = common::log_dir("openapi_spec").join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let out = std::process::Command::new(&python)
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the served document:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every operation takes the headers every route reads and answers the headers every answer
/// carries; every error answer names its codes; 429 and 503 say `Retry-After`.
fn assert_shared_headers(doc: &serde_json::Value) {
    let paths = doc["paths"].as_object().unwrap();
    let mut ops = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            ops += 1;
            let names: Vec<&str> = op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["in"] == "header")
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            for h in ["x-request-id", "x-shardgate-deadline-ms", "traceparent"] {
                assert!(names.contains(&h), "{method} {path}: no {h} parameter");
            }
            let responses = op["responses"].as_object().unwrap();
            for (status, r) in responses {
                assert!(
                    r["headers"]["X-Request-Id"].is_object(),
                    "{method} {path} {status}: no X-Request-Id header"
                );
                let error = r["content"]["application/json"]["schema"]["$ref"]
                    == "#/components/schemas/ErrorBody";
                let retry = r["headers"]["Retry-After"].is_object();
                assert_eq!(
                    error && (status == "429" || status == "503"),
                    retry,
                    "{method} {path} {status}: Retry-After"
                );
            }
            for status in ["404", "414", "429", "500", "504"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path}: no {status}"
                );
            }
            if path.starts_with("/v1/") {
                let bad = &responses["400"]["description"];
                assert!(
                    bad.as_str().unwrap().contains("invalid_id"),
                    "{method} {path}: 400 does not name its codes: {bad}"
                );
            }
            if names.contains(&"Idempotency-Key") {
                let ok = responses
                    .iter()
                    .find(|(s, _)| s.starts_with('2'))
                    .unwrap()
                    .1;
                assert!(
                    ok["headers"]["Idempotent-Replayed"].is_object(),
                    "{method} {path}"
                );
            }
        }
    }
    assert!(ops >= 20, "only {ops} operations");
}
