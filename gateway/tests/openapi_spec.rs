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
