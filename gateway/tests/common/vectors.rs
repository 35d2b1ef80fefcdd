//! Fixed vectors of the audit formats (FORMAT.md §5, "Audit checkpoints"), computed
//! OUTSIDE shardgate (stdlib hmac/hashlib from the format description) by
//! gateway/tests/vectors/make_vectors.py, whose output this file is: do not edit.
#![allow(dead_code)]
/// the audit key (bytes 0..=31), as its key file holds it
pub const AUDIT_KEY_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// chain of both events
pub const CHAIN_ID: &str = "3f1c0a52-7d4e-4b8a-9c61-2e5f0d9a7b13";
/// a fixed token
pub const TOKEN: &str = "sgt_vector-token-0123456789abcdefghijklmnopqrstuvw";
/// SHA-256 of TOKEN, hex
pub const TOKEN_SHA256: &str = "022a576d74a44e09178645ce3566250c7f4d7704cc4ad150cf760f928644fc2f";
/// token id of TOKEN
pub const TOKEN_ID: &str = "022a576d74a44e09";
/// credential id of TOKEN_ID under the audit key
pub const CREDENTIAL_ID: &str = "4ab38e4a5ad48e43164256c210adb59c";
/// a token no deployment knows
pub const GUESSED_TOKEN: &str = "sgt_not-a-real-token";
/// token id of GUESSED_TOKEN
pub const GUESSED_TOKEN_ID: &str = "9e134adfe70b82bf";
/// credential id of GUESSED_TOKEN_ID under the audit key
pub const GUESSED_CREDENTIAL_ID: &str = "47d27933dbb134152beb0653925fd3f0";
/// canonical encoding of event 1 (SGAUDIT1), hex
pub const EVENT1_CANONICAL: &str = "53474155444954310000002433663163306135322d376434652d346238612d396336312d32653566306439613762313300000000000000010000019b76daa87b000000087265712d30303031000000067369676e65720000000973686172642e7075740100000006616363742d3101000000056b65792d3001000000000000000301000000056c6f63616c000000026f6b00000009636166c3a920e29c93000000200000000000000000000000000000000000000000000000000000000000000000";
/// tag of event 1, hex
pub const EVENT1_TAG: &str = "3b453392e11b2f8bb7364a42bf5506891425a7f41dd4f9cc9ffde24d7319334c";
/// canonical encoding of event 2 (SGAUDIT2, prev_tag = event 1's tag), hex
pub const EVENT2_CANONICAL: &str = "53474155444954320000002433663163306135322d376434652d346238612d396336312d32653566306439613762313300000000000000020000019b76daa880000000087265712d3030303200000009616e6f6e796d6f75730000000461757468000000000000000f756e61757468656e746963617465640000001462656172657220746f6b656e207265766f6b6564000000203461623338653461356164343865343331363432353663323130616462353963000000203b453392e11b2f8bb7364a42bf5506891425a7f41dd4f9cc9ffde24d7319334c";
/// tag of event 2, hex
pub const EVENT2_TAG: &str = "20e7d6a1ba01359ba60792bd7c017a4bf3d7576fc8fe0dd0bfde6755e80554eb";
/// checkpoint of the chain's head (event 2) at CHECKPOINT_TS_MS
pub const CHECKPOINT_LINE: &str = "sgcp1 3f1c0a52-7d4e-4b8a-9c61-2e5f0d9a7b13 2 20e7d6a1ba01359ba60792bd7c017a4bf3d7576fc8fe0dd0bfde6755e80554eb 1767225601000 414e03f43dbd15aa0f2a84fc8d07d7eb4af6d8a6d654c22ade319a068aedccdf\n";
/// ts_ms of CHECKPOINT_LINE
pub const CHECKPOINT_TS_MS: i64 = 1767225601000;
