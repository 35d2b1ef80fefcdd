//! Validate every response a test receives against the served OpenAPI document.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};

pub(crate) struct OpenApi {
    pub doc: Value,
}

impl OpenApi {
    pub(crate) fn load() -> Self {
        use utoipa::OpenApi as _;
        let doc = serde_json::to_value(shardgate::http::openapi::ApiDoc::openapi()).unwrap();
        Self { doc }
    }

    /// The path template of the document that `path` (raw, percent-encoded) matches.
    pub(crate) fn template(&self, path: &str) -> Option<String> {
        let segs: Vec<&str> = path.split('/').collect();
        self.doc["paths"].as_object()?.keys().find_map(|t| {
            let tsegs: Vec<&str> = t.split('/').collect();
            let ok = tsegs.len() == segs.len()
                && tsegs.iter().zip(&segs).all(|(a, b)| {
                    (a.starts_with('{') && a.ends_with('}') && !b.is_empty()) || a == b
                });
            ok.then(|| t.clone())
        })
    }

    fn schema_for(&self, method: &str, path: &str, status: u16) -> Option<Value> {
        let Some(t) = self.template(path) else {
            // Unknown routes answer the shared error body.
            return Some(json!({"$ref": "#/components/schemas/ErrorBody"}));
        };
        let op = &self.doc["paths"][&t][method.to_ascii_lowercase()];
        if op.is_null() {
            // Method not allowed: the shared error body.
            return Some(json!({"$ref": "#/components/schemas/ErrorBody"}));
        }
        let resp = &op["responses"][status.to_string()];
        assert!(
            !resp.is_null(),
            "OpenAPI document has no {status} response for {method} {t}"
        );
        let schema = resp["content"]["application/json"]["schema"].clone();
        (!schema.is_null()).then_some(schema)
    }

    /// Panic unless `body` is a documented response of `method path` with `status`.
    pub(crate) fn check(&self, method: &str, path: &str, status: u16, body: &Value) {
        let Some(mut schema) = self.schema_for(method, path, status) else {
            return;
        };
        schema["components"] = self.doc["components"].clone();
        let validator = jsonschema::validator_for(&schema).unwrap();
        if let Err(e) = validator.validate(body) {
            panic!("{method} {path} -> {status}: body does not match the OpenAPI document: {e}\nbody: {body}");
        }
    }
}
