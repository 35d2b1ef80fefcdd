//! A `pkcs11` backend on CloudHSM is only ready while its cluster is: this wrapper adds the
//! cluster monitor's verdict to the backend's health and stats, and forwards every other call
//! unchanged ([`Decorator`]).

use crate::cloudhsm::ClusterMonitor;
use crate::{Decorator, Health, KeyBackend, Stat};
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
impl Decorator for ClusterGated {
    fn inner(&self) -> &dyn KeyBackend {
        self.inner.as_ref()
    }

    fn stats(&self) -> Vec<Stat> {
        let mut s = self.inner.stats();
        let c = self.monitor.status();
        s.push(Stat::new("cloudhsm_cluster_ready", u64::from(c.ready)));
        s.push(Stat::new("cloudhsm_active_hsms", u64::from(c.active_hsms)));
        s
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
