//! The OpenAPI document serves other languages: a Python client generated from the running
//! gateway's `/openapi.json` by the pinned `openapi-python-client` (client-python/) round-trips
//! account put, shard put/get/list/batchGet/delete, the documented headers and the error body
//! against that gateway (client-python/roundtrip.py). `scripts/test.sh` installs the generator
//! in a virtualenv and names its bin/ in `SHARDGATE_TEST_PYTHON_CLIENT_BIN`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::served::Served;
use common::{StoreKind, Tokens};
use std::path::Path;
use std::process::Command;

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// `cmd` with the generator's virtualenv first on PATH (it runs `ruff` on what it writes).
fn in_venv(bin: &Path, exe: &str) -> Command {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![bin.to_path_buf()];
    dirs.extend(std::env::split_paths(&path));
    let mut cmd = Command::new(bin.join(exe));
    cmd.env("PATH", std::env::join_paths(dirs).unwrap());
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_generated_from_the_served_document_round_trips() {
    let Some(bin) = common::require_env("SHARDGATE_TEST_PYTHON_CLIENT_BIN") else {
        return;
    };
    let bin = Path::new(&bin);
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(StoreKind::Sqlite, dir.path())
        .await
        .unwrap();
    let tokens = Tokens::new();
    let cfg = common::config(dir.path(), &url, &tokens);
    let config = dir.path().join("shardgate.toml");
    common::write_config(&cfg, &config);
    let served = Served::start(&config, "python_client", "gateway");

    let logs = common::log_dir("python_client");
    let package = dir.path().join("pkg");
    let out = in_venv(bin, "openapi-python-client")
        .args(["generate", "--meta", "none", "--overwrite", "--url"])
        .arg(format!("{}/openapi.json", served.base))
        .arg("--output-path")
        .arg(package.join("shardgate_client"))
        .output()
        .unwrap();
    common::keep_output(&logs, "generate", &out);
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "openapi-python-client failed:\n{said}"
    );
    // The one route it leaves out is the NDJSON audit search (it generates JSON bodies only);
    // anything else it could not generate is a defect of the document.
    let warnings = said.matches("WARNING parsing").count();
    let ndjson = said.matches("application/x-ndjson").count();
    assert!(
        warnings <= 1 && (warnings == 0 || ndjson >= 1),
        "generator warnings:\n{said}"
    );

    let out = in_venv(bin, "python")
        .arg(repo_root().join("client-python/roundtrip.py"))
        .args(["--base", &served.base, "--package-dir"])
        .arg(&package)
        .env("SHARDGATE_TOKEN", &tokens.admin)
        .output()
        .unwrap();
    common::keep_output(&logs, "roundtrip", &out);
    assert!(
        out.status.success(),
        "the round trip failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(seen["after_delete"], "shard_not_found", "{seen}");
    assert_eq!(seen["bad_token"], "unauthenticated", "{seen}");
    assert_eq!(seen["version"], 1, "{seen}");
    assert_eq!(seen["request_id_echoed"], true, "{seen}");
}
