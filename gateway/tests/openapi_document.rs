//! The OpenAPI document the gateway serves is the checked-in `docs/openapi.json`, byte for
//! byte (pretty-printed): a change to the API's shape shows in review as a change to that file,
//! and clients can be generated from the file without running a gateway. After a deliberate
//! change, write the file anew with
//! `SHARDGATE_BLESS=1 cargo test -p shardgate --test openapi_document` and review its diff.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use utoipa::OpenApi as _;

#[test]
fn the_openapi_document_is_the_checked_in_one() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let doc = shardgate::http::openapi::ApiDoc::openapi()
        .to_pretty_json()
        .unwrap()
        + "\n";
    if std::env::var_os("SHARDGATE_BLESS").is_some() {
        std::fs::write(&path, &doc).unwrap();
    }
    let kept = std::fs::read_to_string(&path).unwrap();
    assert!(
        kept == doc,
        "docs/openapi.json is not the document the gateway serves: regenerate it \
         (SHARDGATE_BLESS=1 cargo test -p shardgate --test openapi_document) and review the diff"
    );
}
