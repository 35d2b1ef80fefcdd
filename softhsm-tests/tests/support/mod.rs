//! Shared support of the SoftHSM2 integration tests.
#![allow(dead_code)]

pub(crate) mod gateway;
