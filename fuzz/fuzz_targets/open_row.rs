//! The envelope decoder: whatever turns a stored row into an identity and a wrapped key and
//! opens it (`envelope::wrapped_of`, a real `local` backend's `unwrap`, `envelope::open_with`,
//! `envelope::open`). A row is database content: an attacker with database access writes
//! every field. Any row may be refused; none may panic, and:
//! - an arbitrary row never opens (nobody outside the keyring can forge a wrap);
//! - a genuinely sealed row with any field changed never opens.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shardgate::domain::envelope;
use shardgate_backends::local::{create_if_missing, LocalBackend};
use shardgate_backends::{DataKey, KeyBackend, ShardIdentity, Version};
use shardgate_store::ShardVersionRow;
use std::sync::OnceLock;
use std::time::Duration;

struct Fixture {
    rt: tokio::runtime::Runtime,
    backend: LocalBackend,
    sealed: ShardVersionRow,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("local.keyring");
        create_if_missing(&path).expect("keyring");
        let backend =
            LocalBackend::open("local", &path, Duration::from_secs(3600)).expect("open keyring");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let id = ShardIdentity::new("acct-fuzz", "shard-1", Version::new(3).expect("version 3"));
        let sealed = rt
            .block_on(envelope::seal(&backend, &id, b"fuzz shard plaintext"))
            .expect("seal");
        let sealed = ShardVersionRow {
            account: id.account.clone(),
            shard: id.shard.clone(),
            version: id.version,
            format_version: i16::from(id.format_version),
            backend: "local".into(),
            key_ref: sealed.wrapped.key_ref,
            key_version: i64::from(sealed.wrapped.key_version),
            wrapped_dek: sealed.wrapped.blob,
            nonce: sealed.nonce.to_vec(),
            ciphertext: sealed.ciphertext,
            created_at: 0,
            created_by: "fuzz".into(),
            key_commitment: Some(sealed.commitment.to_vec()),
        };
        // The fixture itself opens, or every "never opens" below proves nothing.
        assert!(rt.block_on(envelope::open(&backend, &sealed)).is_ok());
        Fixture {
            rt,
            backend,
            sealed,
            _dir: dir,
        }
    })
}

/// A row with every field chosen by the fuzzer (the key reference may be the keyring's own).
#[derive(Debug, Arbitrary)]
struct ArbitraryRow {
    account: String,
    shard: String,
    version: i64,
    format_version: i16,
    own_key_ref: bool,
    key_ref: String,
    key_version: i64,
    wrapped_dek: Vec<u8>,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
    key_commitment: Option<Vec<u8>>,
}

/// One change to the sealed row.
#[derive(Debug, Arbitrary)]
enum Change {
    Account(String),
    Shard(String),
    Version(i64),
    FormatVersion(i16),
    KeyRef(String),
    KeyVersion(i64),
    FlipWrapped(u16, u8),
    FlipNonce(u16, u8),
    FlipCiphertext(u16, u8),
    FlipCommitment(u16, u8),
    DropCommitment,
    WrappedDek(Vec<u8>),
    Nonce(Vec<u8>),
    Ciphertext(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
struct Input {
    row: ArbitraryRow,
    key: [u8; 32],
    change: Change,
}

fn flip(bytes: &mut Vec<u8>, at: u16, mask: u8) {
    if !bytes.is_empty() {
        let i = usize::from(at) % bytes.len();
        bytes[i] ^= mask;
    }
}

fuzz_target!(|input: Input| {
    let f = fixture();
    let r = input.row;
    // The store refuses a stored version below 1 (rows.rs), so no row holds one.
    let Ok(version) = Version::new(r.version) else {
        return;
    };
    let row = ShardVersionRow {
        account: r.account,
        shard: r.shard,
        version,
        format_version: r.format_version,
        backend: "local".into(),
        key_ref: if r.own_key_ref {
            f.sealed.key_ref.clone()
        } else {
            r.key_ref
        },
        key_version: r.key_version,
        wrapped_dek: r.wrapped_dek,
        nonce: r.nonce,
        ciphertext: r.ciphertext,
        created_at: 0,
        created_by: "fuzz".into(),
        key_commitment: r.key_commitment,
    };
    // The read path, step by step, as the batch route runs it ...
    if let Ok((id, wrapped)) = envelope::wrapped_of(&row) {
        if let Ok(dek) = f.rt.block_on(f.backend.unwrap(&id, &wrapped)) {
            assert!(
                envelope::open_with(&dek, &row).is_err(),
                "a forged row opened"
            );
        }
    }
    // ... and in one call, as GET runs it.
    assert!(
        f.rt.block_on(envelope::open(&f.backend, &row)).is_err(),
        "a forged row opened"
    );
    // Opening with some key, whatever the row's lengths.
    let key = DataKey::from_slice(&input.key).expect("32 bytes");
    let _ = envelope::open_with(&key, &row);

    // The genuine row with one field changed.
    let mut t = f.sealed.clone();
    match input.change {
        Change::Account(v) => t.account = v,
        Change::Shard(v) => t.shard = v,
        // A number below 1 is no version: no stored row can hold it (rows.rs refuses it).
        Change::Version(v) => match Version::new(v) {
            Ok(v) => t.version = v,
            Err(_) => return,
        },
        Change::FormatVersion(v) => t.format_version = v,
        Change::KeyRef(v) => t.key_ref = v,
        Change::KeyVersion(v) => t.key_version = v,
        Change::FlipWrapped(at, m) => flip(&mut t.wrapped_dek, at, m),
        Change::FlipNonce(at, m) => flip(&mut t.nonce, at, m),
        Change::FlipCiphertext(at, m) => flip(&mut t.ciphertext, at, m),
        Change::FlipCommitment(at, m) => {
            if let Some(c) = t.key_commitment.as_mut() {
                flip(c, at, m)
            }
        }
        Change::DropCommitment => t.key_commitment = None,
        Change::WrappedDek(v) => t.wrapped_dek = v,
        Change::Nonce(v) => t.nonce = v,
        Change::Ciphertext(v) => t.ciphertext = v,
    }
    let opened = f.rt.block_on(envelope::open(&f.backend, &t));
    if t == f.sealed {
        assert!(opened.is_ok(), "the unchanged row no longer opens");
    } else {
        assert!(opened.is_err(), "a changed row opened: {t:?}");
    }
});
