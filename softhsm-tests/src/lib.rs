//! Placeholder crate: SoftHSM2 integration tests of the pkcs11 backend land with the HSM issue.
