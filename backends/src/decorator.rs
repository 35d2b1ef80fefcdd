//! The one forwarding helper for backend decorators: a wrapper names its inner backend and
//! overrides only what it changes; [`KeyBackend`] forwards every other call to the inner one.
//!
//! The gateway stacks three wrappers on a configured backend (the key lifecycle, the circuit
//! breaker, and for CloudHSM the cluster gate, [`crate::cluster_gate`]). Each once spelled out
//! all nineteen [`KeyBackend`] methods, most of them pure forwarding, so a reader had to diff
//! the bodies to see which calls a wrapper really touches. Rust has no delegation, so the
//! forwarding is written here once: [`Decorator`] repeats the trait's methods with defaults
//! that call [`Decorator::inner`], and a blanket `impl<D: Decorator> KeyBackend for D` routes
//! the trait onto them. A wrapper's `impl Decorator` then lists exactly the calls it changes.
//!
//! The price of forwarding by default: a method added to [`KeyBackend`] later reaches the
//! inner backend through every wrapper until a wrapper overrides it. Adding one means adding
//! it here (the blanket impl does not compile otherwise) and then deciding, per wrapper,
//! whether it must be guarded; the wrappers' `//!` docs say what each one guards.

use crate::{
    BackendError, DataKey, Health, KekVersion, KeyBackend, ShardIdentity, Stat, WrappedKey,
};
use async_trait::async_trait;

/// A [`KeyBackend`] that wraps another. Implement [`Decorator::inner`] and override the
/// methods whose behaviour the wrapper changes; every method's default forwards to the inner
/// backend unchanged (a pure pass-through, no extra policy). The methods mean what the
/// [`KeyBackend`] methods of the same name mean.
#[async_trait]
#[allow(missing_docs)] // each method is documented on `KeyBackend`, which it implements
pub trait Decorator: Send + Sync + 'static {
    /// The wrapped backend.
    fn inner(&self) -> &dyn KeyBackend;

    fn name(&self) -> &str {
        self.inner().name()
    }

    fn kind(&self) -> &'static str {
        self.inner().kind()
    }

    async fn generate_data_key(
        &self,
        id: &ShardIdentity,
    ) -> Result<(DataKey, WrappedKey), BackendError> {
        self.inner().generate_data_key(id).await
    }

    async fn wrap(&self, id: &ShardIdentity, dek: &DataKey) -> Result<WrappedKey, BackendError> {
        self.inner().wrap(id, dek).await
    }

    async fn unwrap(
        &self,
        id: &ShardIdentity,
        wrapped: &WrappedKey,
    ) -> Result<DataKey, BackendError> {
        self.inner().unwrap(id, wrapped).await
    }

    async fn unwrap_many(
        &self,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<DataKey, BackendError>> {
        self.inner().unwrap_many(items).await
    }

    fn holds_key_ref(&self, key_ref: &str) -> bool {
        self.inner().holds_key_ref(key_ref)
    }

    fn kek_versions(&self) -> Vec<KekVersion> {
        self.inner().kek_versions()
    }

    async fn wrap_under(
        &self,
        version: u32,
        id: &ShardIdentity,
        dek: &DataKey,
    ) -> Result<WrappedKey, BackendError> {
        self.inner().wrap_under(version, id, dek).await
    }

    async fn generate_data_key_under(
        &self,
        version: u32,
        id: &ShardIdentity,
    ) -> Result<(DataKey, WrappedKey), BackendError> {
        self.inner().generate_data_key_under(version, id).await
    }

    async fn rewrap_from_under(
        &self,
        version: u32,
        id: &ShardIdentity,
        source: &dyn KeyBackend,
        wrapped: &WrappedKey,
    ) -> Result<WrappedKey, BackendError> {
        self.inner()
            .rewrap_from_under(version, id, source, wrapped)
            .await
    }

    async fn health(&self) -> Health {
        self.inner().health().await
    }

    fn stats(&self) -> Vec<Stat> {
        self.inner().stats()
    }

    async fn rewrap_from(
        &self,
        id: &ShardIdentity,
        source: &dyn KeyBackend,
        wrapped: &WrappedKey,
    ) -> Result<WrappedKey, BackendError> {
        self.inner().rewrap_from(id, source, wrapped).await
    }

    async fn rewrap_many_from(
        &self,
        source: &dyn KeyBackend,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<WrappedKey, BackendError>> {
        self.inner().rewrap_many_from(source, items).await
    }

    async fn rewrap_many_from_under(
        &self,
        version: u32,
        source: &dyn KeyBackend,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<WrappedKey, BackendError>> {
        self.inner()
            .rewrap_many_from_under(version, source, items)
            .await
    }

    async fn verify_many(
        &self,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<(), BackendError>> {
        self.inner().verify_many(items).await
    }

    async fn verify(&self, id: &ShardIdentity, wrapped: &WrappedKey) -> Result<(), BackendError> {
        self.inner().verify(id, wrapped).await
    }

    /// The inner backend's `as_any`: a wrapper is transparent to the `rewrap_from` overrides
    /// that recognise a source of their own kind.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        self.inner().as_any()
    }
}

#[async_trait]
impl<D: Decorator> KeyBackend for D {
    fn name(&self) -> &str {
        Decorator::name(self)
    }

    fn kind(&self) -> &'static str {
        Decorator::kind(self)
    }

    async fn generate_data_key(
        &self,
        id: &ShardIdentity,
    ) -> Result<(DataKey, WrappedKey), BackendError> {
        Decorator::generate_data_key(self, id).await
    }

    async fn wrap(&self, id: &ShardIdentity, dek: &DataKey) -> Result<WrappedKey, BackendError> {
        Decorator::wrap(self, id, dek).await
    }

    async fn unwrap(
        &self,
        id: &ShardIdentity,
        wrapped: &WrappedKey,
    ) -> Result<DataKey, BackendError> {
        Decorator::unwrap(self, id, wrapped).await
    }

    async fn unwrap_many(
        &self,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<DataKey, BackendError>> {
        Decorator::unwrap_many(self, items).await
    }

    fn holds_key_ref(&self, key_ref: &str) -> bool {
        Decorator::holds_key_ref(self, key_ref)
    }

    fn kek_versions(&self) -> Vec<KekVersion> {
        Decorator::kek_versions(self)
    }

    async fn wrap_under(
        &self,
        version: u32,
        id: &ShardIdentity,
        dek: &DataKey,
    ) -> Result<WrappedKey, BackendError> {
        Decorator::wrap_under(self, version, id, dek).await
    }

    async fn generate_data_key_under(
        &self,
        version: u32,
        id: &ShardIdentity,
    ) -> Result<(DataKey, WrappedKey), BackendError> {
        Decorator::generate_data_key_under(self, version, id).await
    }

    async fn rewrap_from_under(
        &self,
        version: u32,
        id: &ShardIdentity,
        source: &dyn KeyBackend,
        wrapped: &WrappedKey,
    ) -> Result<WrappedKey, BackendError> {
        Decorator::rewrap_from_under(self, version, id, source, wrapped).await
    }

    async fn health(&self) -> Health {
        Decorator::health(self).await
    }

    fn stats(&self) -> Vec<Stat> {
        Decorator::stats(self)
    }

    async fn rewrap_from(
        &self,
        id: &ShardIdentity,
        source: &dyn KeyBackend,
        wrapped: &WrappedKey,
    ) -> Result<WrappedKey, BackendError> {
        Decorator::rewrap_from(self, id, source, wrapped).await
    }

    async fn rewrap_many_from(
        &self,
        source: &dyn KeyBackend,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<WrappedKey, BackendError>> {
        Decorator::rewrap_many_from(self, source, items).await
    }

    async fn rewrap_many_from_under(
        &self,
        version: u32,
        source: &dyn KeyBackend,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<WrappedKey, BackendError>> {
        Decorator::rewrap_many_from_under(self, version, source, items).await
    }

    async fn verify_many(
        &self,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<(), BackendError>> {
        Decorator::verify_many(self, items).await
    }

    async fn verify(&self, id: &ShardIdentity, wrapped: &WrappedKey) -> Result<(), BackendError> {
        Decorator::verify(self, id, wrapped).await
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Decorator::as_any(self)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::local::LocalBackend;
    use crate::Version;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// Counts wraps and changes the health text; forwards the rest by default.
    struct Counting {
        inner: Arc<dyn KeyBackend>,
        wraps: AtomicUsize,
    }

    #[async_trait]
    impl Decorator for Counting {
        fn inner(&self) -> &dyn KeyBackend {
            self.inner.as_ref()
        }

        async fn wrap(
            &self,
            id: &ShardIdentity,
            dek: &DataKey,
        ) -> Result<WrappedKey, BackendError> {
            self.wraps.fetch_add(1, Ordering::Relaxed);
            self.inner.wrap(id, dek).await
        }

        async fn health(&self) -> Health {
            let inner = self.inner.health().await;
            Health {
                detail: format!("{}; counted", inner.detail),
                ..inner
            }
        }
    }

    #[tokio::test]
    async fn a_decorator_changes_what_it_overrides_and_forwards_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("local.keyring");
        crate::local::create_if_missing(&path).unwrap();
        let local = LocalBackend::open("local", &path, Duration::from_millis(0)).unwrap();
        let inner: Arc<dyn KeyBackend> = Arc::new(local);
        let counting = Counting {
            inner: Arc::clone(&inner),
            wraps: AtomicUsize::new(0),
        };
        let backend: &dyn KeyBackend = &counting;
        let id = ShardIdentity::new("acct", "s", Version::FIRST);

        // Overridden: counted, and the health text is the wrapper's.
        let dek = DataKey::generate();
        let wrapped = backend.wrap(&id, &dek).await.unwrap();
        assert_eq!(counting.wraps.load(Ordering::Relaxed), 1);
        assert!(backend.health().await.detail.ends_with("; counted"));

        // Forwarded: the inner backend's answers, unchanged.
        assert_eq!(backend.name(), "local");
        assert_eq!(backend.kind(), inner.kind());
        assert_eq!(backend.kek_versions(), inner.kek_versions());
        assert!(backend.holds_key_ref(&wrapped.key_ref));
        let opened = backend.unwrap(&id, &wrapped).await.unwrap();
        assert_eq!(opened.expose(), dek.expose());
        let other = ShardIdentity::new("acct", "s", Version::new(2).unwrap());
        assert_eq!(
            backend.unwrap(&other, &wrapped).await.err(),
            Some(BackendError::Integrity)
        );
        // generate_data_key's default on the inner backend calls the INNER wrap, so it is
        // not counted: forwarding hands the call over whole.
        backend.generate_data_key(&id).await.unwrap();
        assert_eq!(counting.wraps.load(Ordering::Relaxed), 1);
        assert_eq!(backend.as_any().is_some(), inner.as_any().is_some());
    }
}
