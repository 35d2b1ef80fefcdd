//! Private files (keys, tokens, passwords): the rules of `shardgate_backends::files`,
//! re-exported so that the gateway and its tests say `shardgate::domain::files`. They live in the
//! backends crate because its keyring and PIN file need them and it cannot import from the
//! gateway: one set of rules for every secret file. Files shardgate creates are written
//! under a fresh random name (O_EXCL, 0600) and renamed into place; files an operator
//! provides may be symlinks and are checked on the opened descriptor.

pub use shardgate_backends::files::{
    create_private, read_secret, read_secret_text, refusal, write_private, SecretFileError,
};
