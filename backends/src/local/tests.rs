//! Unit tests of the local keyring backend (`local.rs`): the file format, rotation, reloads.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::Version;

fn temp_keyring() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("local.keyring");
    create_if_missing(&path).unwrap();
    (dir, path)
}

#[tokio::test]
async fn local_backend_passes_conformance() {
    let (_d, path) = temp_keyring();
    let b = LocalBackend::open("local", &path, Duration::from_millis(0)).unwrap();
    crate::conformance::run(&b).await.unwrap();
}

#[tokio::test]
async fn reads_naming_unknown_versions_force_few_reloads() {
    let (_d, path) = temp_keyring();
    let b = LocalBackend::open("local", &path, Duration::from_secs(3600))
        .unwrap()
        .with_forced_reload_interval(Duration::from_secs(3600));
    let id = ShardIdentity::new("acct", "s", Version::FIRST);
    let (_, mut w) = b.generate_data_key(&id).await.unwrap();
    let forced = |b: &LocalBackend| b.stats()[0].value;
    // Rows edited to name an unknown version: every read refused, one re-read of the file.
    w.key_version = 9;
    for _ in 0..50 {
        assert!(matches!(
            b.unwrap(&id, &w).await,
            Err(BackendError::KeyUnusable(_))
        ));
    }
    assert_eq!(forced(&b), 1);
    // Another keyring's key reference: no re-read can help, none is made.
    w.key_ref = "another-keyring".into();
    w.key_version = 1;
    for _ in 0..50 {
        assert!(b.unwrap(&id, &w).await.is_err());
    }
    assert_eq!(forced(&b), 1);
}

#[test]
fn created_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let (_d, path) = temp_keyring();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn assert_private_regular(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).unwrap();
    assert!(meta.file_type().is_file(), "{} is a link", path.display());
    assert_eq!(meta.mode() & 0o7777, 0o600);
}

#[test]
fn a_file_others_may_read_or_a_group_may_write_is_refused() {
    let (_d, path) = temp_keyring();
    for mode in [0o644, 0o604, 0o660, 0o666] {
        chmod(&path, mode);
        let err = Keyring::load(&path).unwrap_err();
        assert!(
            matches!(err, KeyringError::InsecurePermissions { .. }),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains(&format!("mode {mode:o}")), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
    }
    // Group-readable is allowed (Secret volumes with `defaultMode: 0440` + `fsGroup`).
    chmod(&path, 0o640);
    Keyring::load(&path).unwrap();
}

/// A Kubernetes Secret volume: `local.keyring -> ..data/local.keyring`, `..data -> ..TS`,
/// the file 0440. It loads through the links.
#[test]
fn a_mounted_secret_symlinked_keyring_loads() {
    use std::os::unix::fs::symlink;
    let (d, made) = temp_keyring();
    let mount = d.path().join("mount");
    let ts = mount.join("..2026_12_06_00_00_00.1");
    std::fs::create_dir_all(&ts).unwrap();
    std::fs::rename(&made, ts.join("local.keyring")).unwrap();
    chmod(&ts.join("local.keyring"), 0o440);
    symlink("..2026_12_06_00_00_00.1", mount.join("..data")).unwrap();
    let path = mount.join("local.keyring");
    symlink("..data/local.keyring", &path).unwrap();
    let b = LocalBackend::open("local", &path, Duration::from_millis(0)).unwrap();
    assert_eq!(b.with_keyring(|k| k.active_version()), Some(1));
    // create_if_missing leaves it alone.
    assert!(!create_if_missing(&path).unwrap());
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_symlink());
}

/// `save` once wrote `.NAME.tmp-PID` with O_CREAT|O_TRUNC and no O_EXCL: a symlink
/// planted at that name received every key version, a planted 0666 file became the
/// keyring. Neither name is written now, and the keyring is a new 0600 file.
#[test]
fn save_never_writes_through_a_planted_name() {
    use std::os::unix::fs::symlink;
    let (d, path) = temp_keyring();
    let old_tmp = d
        .path()
        .join(format!(".local.keyring.tmp-{}", std::process::id()));
    let outside = d.path().join("attacker-readable");
    std::fs::write(&outside, "").unwrap();
    chmod(&outside, 0o666);

    symlink(&outside, &old_tmp).unwrap();
    let mut k = Keyring::load(&path).unwrap();
    k.rotate();
    k.save(&path).unwrap();
    assert_eq!(
        std::fs::read(&outside).unwrap(),
        b"",
        "wrote through the symlink"
    );
    assert!(std::fs::symlink_metadata(&old_tmp)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_private_regular(&path);
    std::fs::remove_file(&old_tmp).unwrap();

    std::fs::write(&old_tmp, "").unwrap();
    chmod(&old_tmp, 0o666);
    k.rotate();
    k.save(&path).unwrap();
    assert_eq!(
        std::fs::read(&old_tmp).unwrap(),
        b"",
        "wrote the planted file"
    );
    assert_private_regular(&path);
    assert_eq!(Keyring::load(&path).unwrap().versions().len(), 3);

    // A symlink planted at the keyring's own name is replaced, never followed.
    std::fs::remove_file(&path).unwrap();
    symlink(&outside, &path).unwrap();
    k.save(&path).unwrap();
    assert_eq!(std::fs::read(&outside).unwrap(), b"");
    assert_private_regular(&path);
}

/// A dangling symlink at the name the embedded default creates is not written through.
#[test]
fn create_if_missing_never_writes_through_a_dangling_symlink() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("local.keyring");
    let target = d.path().join("elsewhere");
    std::os::unix::fs::symlink(&target, &path).unwrap();
    assert!(!create_if_missing(&path).unwrap());
    assert!(
        !target.exists(),
        "created the keyring at the symlink's target"
    );
    assert!(matches!(Keyring::load(&path), Err(KeyringError::Io { .. })));
}

#[test]
fn errors_and_debug_never_show_key_bytes() {
    let (_d, path) = temp_keyring();
    let k = Keyring::load(&path).unwrap();
    let key_b64 = B64.encode(k.key(1).unwrap().as_ref());
    assert!(!format!("{k:?}").contains(&key_b64));
    // A corrupt file's error must not quote the file.
    let text = std::fs::read_to_string(&path).unwrap();
    let broken = text.replacen("\"format\"", "\"format\" x", 1);
    std::fs::write(&path, &broken).unwrap();
    let err = Keyring::load(&path).unwrap_err().to_string();
    assert!(!err.contains(&key_b64), "{err}");
}

#[tokio::test]
async fn rotated_version_unwraps_but_does_not_wrap_until_promoted() {
    let (_d, path) = temp_keyring();
    let b = LocalBackend::open("local", &path, Duration::from_millis(0)).unwrap();
    let id = ShardIdentity::new("acct", "s", Version::FIRST);
    let (_, w1) = b.generate_data_key(&id).await.unwrap();
    assert_eq!(w1.key_version, 1);

    let mut k = Keyring::load(&path).unwrap();
    assert_eq!(k.rotate(), 2);
    k.save(&path).unwrap();
    b.reload();
    let (_, still_v1) = b.generate_data_key(&id).await.unwrap();
    assert_eq!(
        still_v1.key_version, 1,
        "a rotated version must not wrap before promote"
    );

    // A wrap made by a replica that already promoted v2 opens here.
    let mut promoted = Keyring::load(&path).unwrap();
    promoted.promote(2).unwrap();
    let dek = DataKey::generate();
    let blob = seal_dek(promoted.key(2).unwrap(), &id, &dek).unwrap();
    let w2 = WrappedKey {
        key_ref: promoted.id().to_string(),
        key_version: 2,
        blob,
    };
    assert_eq!(b.unwrap(&id, &w2).await.unwrap().expose(), dek.expose());

    promoted.save(&path).unwrap();
    b.reload();
    let (_, now_v2) = b.generate_data_key(&id).await.unwrap();
    assert_eq!(now_v2.key_version, 2);
    assert!(
        b.unwrap(&id, &w1).await.is_ok(),
        "old version must still unwrap"
    );
}

#[tokio::test]
async fn wrap_under_uses_the_version_asked_and_destroy_erases_its_key() {
    let (_d, path) = temp_keyring();
    let b = LocalBackend::open("local", &path, Duration::from_millis(0)).unwrap();
    let mut k = Keyring::load(&path).unwrap();
    assert_eq!(k.rotate(), 2);
    k.save(&path).unwrap();
    let id = ShardIdentity::new("acct", "s", Version::FIRST);
    let dek = DataKey::generate();
    // Version 2 is decrypt-only in the file; the gateway's lifecycle may still pick it.
    let w2 = b.wrap_under(2, &id, &dek).await.unwrap();
    assert_eq!(w2.key_version, 2);
    assert_eq!(b.unwrap(&id, &w2).await.unwrap().expose(), dek.expose());
    assert!(matches!(
        b.wrap_under(3, &id, &dek).await,
        Err(BackendError::KeyUnusable(_))
    ));
    let listed: Vec<(u32, KeyState)> = b
        .kek_versions()
        .into_iter()
        .map(|v| (v.version, v.state))
        .collect();
    assert_eq!(
        listed,
        vec![(1, KeyState::Active), (2, KeyState::DecryptOnly)]
    );

    let mut k = Keyring::load(&path).unwrap();
    k.destroy(2).unwrap();
    k.save(&path).unwrap();
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(file["versions"][1]["state"], "destroyed");
    assert!(file["versions"][1].get("key").is_none(), "key bytes erased");
    assert!(file["versions"][0].get("key").is_some());
    assert!(matches!(
        b.unwrap(&id, &w2).await,
        Err(BackendError::KeyUnusable(_))
    ));
}

#[test]
fn promote_refuses_unknown_version() {
    let mut k = Keyring::generate();
    assert!(k.promote(7).is_err());
}

#[tokio::test]
async fn other_keyring_is_key_unusable() {
    let (_d1, p1) = temp_keyring();
    let (_d2, p2) = temp_keyring();
    let a = LocalBackend::open("a", &p1, Duration::from_secs(1)).unwrap();
    let b = LocalBackend::open("b", &p2, Duration::from_secs(1)).unwrap();
    let id = ShardIdentity::new("acct", "s", Version::FIRST);
    let (_, w) = a.generate_data_key(&id).await.unwrap();
    assert!(matches!(
        b.unwrap(&id, &w).await,
        Err(BackendError::KeyUnusable(_))
    ));
}
