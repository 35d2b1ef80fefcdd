//! A `pkcs11` backend on CloudHSM is only ready while its cluster is: this wrapper adds the
//! cluster monitor's verdict to the backend's health, and delegates everything else.

use crate::cloudhsm::ClusterMonitor;
use crate::{BackendError, DataKey, Health, KeyBackend, ShardIdentity, Stat, WrappedKey};
use async_trait::async_trait;
use std::sync::Arc;

/// A backend gated by a CloudHSM cluster's state.
pub struct ClusterGated {
    inner: Arc<dyn KeyBackend>,
    monitor: Arc<ClusterMonitor>,
}

impl ClusterGated {
    /// Gate `inner` by `monitor`.
    pub fn new(inner: Arc<dyn KeyBackend>, monitor: Arc<ClusterMonitor>) -> Self {
        Self { inner, monitor }
    }
}

#[async_trait]
impl KeyBackend for ClusterGated {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn holds_key_ref(&self, key_ref: &str) -> bool {
        self.inner.holds_key_ref(key_ref)
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn generate_data_key(
        &self,
        id: &ShardIdentity,
    ) -> Result<(DataKey, WrappedKey), BackendError> {
        self.inner.generate_data_key(id).await
    }

    async fn wrap(&self, id: &ShardIdentity, dek: &DataKey) -> Result<WrappedKey, BackendError> {
        self.inner.wrap(id, dek).await
    }

    async fn unwrap(
        &self,
        id: &ShardIdentity,
        wrapped: &WrappedKey,
    ) -> Result<DataKey, BackendError> {
        self.inner.unwrap(id, wrapped).await
    }

    async fn unwrap_many(
        &self,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<DataKey, BackendError>> {
        self.inner.unwrap_many(items).await
    }

    async fn verify(&self, id: &ShardIdentity, wrapped: &WrappedKey) -> Result<(), BackendError> {
        self.inner.verify(id, wrapped).await
    }

    async fn verify_many(
        &self,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<(), BackendError>> {
        self.inner.verify_many(items).await
    }

    async fn rewrap_many_from(
        &self,
        source: &dyn KeyBackend,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<WrappedKey, BackendError>> {
        self.inner.rewrap_many_from(source, items).await
    }

    async fn rewrap_many_from_under(
        &self,
        version: u32,
        source: &dyn KeyBackend,
        items: &[(ShardIdentity, WrappedKey)],
    ) -> Vec<Result<WrappedKey, BackendError>> {
        self.inner
            .rewrap_many_from_under(version, source, items)
            .await
    }

    async fn rewrap_from(
        &self,
        id: &ShardIdentity,
        source: &dyn KeyBackend,
        wrapped: &WrappedKey,
    ) -> Result<WrappedKey, BackendError> {
        self.inner.rewrap_from(id, source, wrapped).await
    }

    fn kek_versions(&self) -> Vec<crate::KekVersion> {
        self.inner.kek_versions()
    }

    async fn wrap_under(
        &self,
        version: u32,
        id: &ShardIdentity,
        dek: &DataKey,
    ) -> Result<WrappedKey, BackendError> {
        self.inner.wrap_under(version, id, dek).await
    }

    async fn generate_data_key_under(
        &self,
        version: u32,
        id: &ShardIdentity,
    ) -> Result<(DataKey, WrappedKey), BackendError> {
        self.inner.generate_data_key_under(version, id).await
    }

    async fn rewrap_from_under(
        &self,
        version: u32,
        id: &ShardIdentity,
        source: &dyn KeyBackend,
        wrapped: &WrappedKey,
    ) -> Result<WrappedKey, BackendError> {
        self.inner
            .rewrap_from_under(version, id, source, wrapped)
            .await
    }

    fn stats(&self) -> Vec<Stat> {
        let mut s = self.inner.stats();
        let c = self.monitor.status();
        s.push(Stat::new("cloudhsm_cluster_ready", u64::from(c.ready)));
        s.push(Stat::new("cloudhsm_active_hsms", u64::from(c.active_hsms)));
        s
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        self.inner.as_any()
    }

    async fn health(&self) -> Health {
        let inner = self.inner.health().await;
        let cluster = self.monitor.status();
        let cluster_text = match (&cluster.state, &cluster.reason) {
            (_, Some(reason)) => format!("cluster not ready: {reason}"),
            (Some(state), None) => {
                format!("cluster {state}, {} active HSM(s)", cluster.active_hsms)
            }
            (None, None) => "cluster state unknown".to_string(),
        };
        Health {
            usable: inner.usable && cluster.ready,
            detail: format!("{}; {cluster_text}", inner.detail),
        }
    }
}
