//! Wrapping and unwrapping data keys in batches on one session checkout (batch reads, the
//! migration's re-wraps), and the checks a wrapped key passes before it reaches the HSM.

use super::context::rv;
use super::session::{open, seal, OpenError, SealError};
use super::{classify, seal_error, Core, Keks, OpError, Pkcs11Backend, BLOB_LEN, DEK_LEN};
use crate::{BackendError, DataKey, KeyBackend, ShardIdentity, WrappedKey};
use cryptoki::error::RvError;
use cryptoki::session::Session;
use std::sync::Arc;

impl Pkcs11Backend {
    /// Unwrap many data keys on ONE session checkout (batch reads). One result per item, in
    /// order; a fault during the batch recovers and retries the batch once.
    pub async fn unwrap_batch(
        &self,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<DataKey, BackendError>> {
        let mut out: Vec<Option<Result<DataKey, BackendError>>> = vec![None; items.len()];
        let mut refreshed = false;
        let mut todo = Vec::new();
        for (i, (id, w)) in items.iter().enumerate() {
            if let Err(e) = self.precheck(w, &mut refreshed).await {
                out[i] = Some(Err(e));
            } else {
                todo.push((i, id.aad(), w.clone()));
            }
        }
        if !todo.is_empty() {
            let todo = Arc::new(todo);
            let t2 = todo.clone();
            let res = self
                .inner
                .execute(move |core, s, keks| {
                    let mut res = Vec::with_capacity(t2.len());
                    for (_, aad, w) in t2.iter() {
                        match unwrap_on(core, s, keks, aad, w) {
                            Ok(k) => res.push(Ok(k)),
                            Err(OpError::Final(e)) => res.push(Err(e)),
                            Err(other) => return Err(other),
                        }
                    }
                    Ok(res)
                })
                .await;
            match res {
                Ok(results) => {
                    for ((i, _, _), r) in todo.iter().zip(results) {
                        out[*i] = Some(r);
                    }
                }
                Err(e) => {
                    for (i, _, _) in todo.iter() {
                        out[*i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(BackendError::Internal("batch item lost".into()))))
            .collect()
    }

    /// Wrap many data keys on ONE session checkout, under `version` (or the newest version
    /// on the token when `None`); one result per item, in order. A fault during the batch
    /// recovers and wraps the batch again (fresh IVs: nothing of the first try is kept).
    async fn wrap_batch(
        &self,
        version: Option<u32>,
        items: Vec<(Vec<u8>, DataKey)>,
    ) -> Vec<Result<WrappedKey, BackendError>> {
        if items.is_empty() {
            return Vec::new();
        }
        if let Some(v) = version {
            if !self.inner.core.keks().handles.contains_key(&v) {
                // Rotated in by another process since this one last looked.
                let _ = self.refresh_keys().await;
            }
        }
        let n = items.len();
        let items = Arc::new(items);
        let res = self
            .inner
            .execute(move |core, s, keks| {
                let picked = match version {
                    Some(v) => keks.handles.get(&v).map(|&h| (v, h)),
                    None => keks.handles.iter().next_back().map(|(&v, &h)| (v, h)),
                };
                let Some((v, h)) = picked else {
                    return Err(OpError::Final(BackendError::KeyUnusable(match version {
                        Some(v) => format!("KEK version {v} is not on the token"),
                        None => "no KEK version".into(),
                    })));
                };
                let mut out = Vec::with_capacity(items.len());
                for (aad, dek) in items.iter() {
                    match seal(s, h, core.cfg.iv, aad, dek.expose()) {
                        Ok(blob) => out.push(Ok(WrappedKey {
                            key_ref: core.cfg.kek_label.clone(),
                            key_version: v,
                            blob,
                        })),
                        Err(SealError::Hsm(e)) => match classify(&e) {
                            OpError::Final(e) => out.push(Err(e)),
                            other => return Err(other),
                        },
                        Err(other) => out.push(Err(seal_error(&other))),
                    }
                }
                Ok(out)
            })
            .await;
        match res {
            Ok(out) => out,
            Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
        }
    }

    /// Unwrap every item on `source` (its own batch), then wrap the keys here on one
    /// checkout; the plaintext keys are zeroized when the batch is done.
    pub(super) async fn rewrap_batch(
        &self,
        version: Option<u32>,
        source: &dyn KeyBackend,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<WrappedKey, BackendError>> {
        let opened = source.unwrap_many(items).await;
        let mut out: Vec<Option<Result<WrappedKey, BackendError>>> = Vec::new();
        let mut todo = Vec::new();
        for ((id, _), dek) in items.iter().zip(opened) {
            match dek {
                Ok(dek) => {
                    todo.push((id.aad(), dek));
                    out.push(None);
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        let mut wrapped = self.wrap_batch(version, todo).await.into_iter();
        out.into_iter()
            .map(|r| {
                r.or_else(|| wrapped.next())
                    .unwrap_or_else(|| Err(BackendError::Internal("batch item lost".into())))
            })
            .collect()
    }

    pub(super) async fn precheck(
        &self,
        w: &WrappedKey,
        refreshed: &mut bool,
    ) -> Result<(), BackendError> {
        let cfg = &self.inner.core.cfg;
        if w.key_ref != cfg.kek_label {
            return Err(BackendError::KeyUnusable(
                "data key was wrapped by another KEK".into(),
            ));
        }
        if w.blob.len() != BLOB_LEN {
            return Err(BackendError::Integrity);
        }
        if !self.inner.core.keks().handles.contains_key(&w.key_version) {
            // Another process may have rotated in a new version: look once.
            if !*refreshed {
                *refreshed = true;
                let _ = self.refresh_keys().await;
            }
            if !self.inner.core.keks().handles.contains_key(&w.key_version) {
                return Err(BackendError::KeyUnusable(format!(
                    "KEK version {} is not on the token",
                    w.key_version
                )));
            }
        }
        Ok(())
    }
}

pub(super) fn unwrap_on(
    core: &Core,
    s: &Session,
    keks: &Keks,
    aad: &[u8],
    w: &WrappedKey,
) -> Result<DataKey, OpError> {
    let Some(&h) = keks.handles.get(&w.key_version) else {
        return Err(OpError::Final(BackendError::KeyUnusable(format!(
            "KEK version {} is not on the token",
            w.key_version
        ))));
    };
    match open(s, h, aad, &w.blob, DEK_LEN) {
        Ok(plain) => DataKey::from_slice(&plain).ok_or(OpError::Final(BackendError::Integrity)),
        Err(OpenError::Malformed) => Err(OpError::Final(BackendError::Integrity)),
        Err(OpenError::Hsm(e)) => match rv(&e) {
            Some(
                RvError::GeneralError
                | RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::FunctionFailed,
            ) => {
                // Bad tag, or a fault? Ask the same session and key to open the probe.
                if core.probe_ok(s, w.key_version, h) {
                    Err(OpError::Final(BackendError::Integrity))
                } else {
                    Err(classify(&e))
                }
            }
            _ => Err(classify(&e)),
        },
    }
}
