//! CloudHSM cluster discovery: is the cluster behind a `pkcs11` backend able to serve?
//!
//! [`ClusterMonitor::start`] calls `DescribeClusters` (filtered on the cluster id) at once
//! and then every `poll_interval_ms` in a tokio task, and keeps the latest
//! [`ClusterStatus`]. The readiness rule is the pure function [`evaluate`]: the cluster must
//! exist, be `ACTIVE`, and have at least `min_active_hsms` HSMs in state `ACTIVE`.

use crate::BackendError;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

/// Configuration of the cluster monitor of one `pkcs11` backend on CloudHSM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudHsmConfig {
    /// The cluster id (`cluster-...`).
    pub cluster_id: String,
    /// AWS region of the cluster.
    pub region: String,
    /// Endpoint override (VPC endpoint; moto in tests).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Fewest HSMs in state `ACTIVE` for the backend to be ready.
    #[serde(default = "default_min_active_hsms")]
    pub min_active_hsms: u32,
    /// How often the cluster is described.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
}

fn default_min_active_hsms() -> u32 {
    1
}
fn default_poll_interval_ms() -> u64 {
    30_000
}

/// The parts of a `DescribeClusters` answer the readiness rule needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCluster {
    /// The cluster id.
    pub cluster_id: String,
    /// Cluster state as AWS spells it (`ACTIVE`, `DEGRADED`, `DELETED`, ...).
    pub state: String,
    /// The state of each HSM in the cluster (`ACTIVE`, `CREATE_IN_PROGRESS`, ...).
    pub hsm_states: Vec<String>,
}

impl ParsedCluster {
    /// Extract what [`evaluate`] needs from an SDK cluster.
    pub fn from_sdk(c: &aws_sdk_cloudhsmv2::types::Cluster) -> Self {
        Self {
            cluster_id: c.cluster_id().unwrap_or_default().to_string(),
            state: c
                .state()
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|| "UNKNOWN".into()),
            hsm_states: c
                .hsms()
                .iter()
                .map(|h| {
                    h.state()
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_else(|| "UNKNOWN".into())
                })
                .collect(),
        }
    }
}

/// Readiness of a cluster, with a secret-free reason when not ready.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClusterStatus {
    /// Whether the cluster can serve the backend.
    pub ready: bool,
    /// The cluster state, when the cluster was found.
    pub state: Option<String>,
    /// HSMs in state `ACTIVE`.
    pub active_hsms: u32,
    /// Why it is not ready (`None` when ready).
    pub reason: Option<String>,
}

/// The readiness rule: missing, not `ACTIVE`, or too few `ACTIVE` HSMs → not ready.
pub fn evaluate(cluster: Option<&ParsedCluster>, min_active_hsms: u32) -> ClusterStatus {
    let Some(c) = cluster else {
        return ClusterStatus {
            ready: false,
            state: None,
            active_hsms: 0,
            reason: Some("cluster not found (missing or deleted)".into()),
        };
    };
    let active =
        u32::try_from(c.hsm_states.iter().filter(|s| *s == "ACTIVE").count()).unwrap_or(u32::MAX);
    let reason = if c.state != "ACTIVE" {
        Some(format!(
            "cluster {} is {}, not ACTIVE",
            c.cluster_id, c.state
        ))
    } else if active < min_active_hsms {
        Some(format!(
            "cluster {} has {active} ACTIVE HSM(s), fewer than the {min_active_hsms} required",
            c.cluster_id
        ))
    } else {
        None
    };
    ClusterStatus {
        ready: reason.is_none(),
        state: Some(c.state.clone()),
        active_hsms: active,
        reason,
    }
}

/// Watches one CloudHSM cluster.
pub struct ClusterMonitor {
    cfg: CloudHsmConfig,
    client: aws_sdk_cloudhsmv2::Client,
    status: RwLock<ClusterStatus>,
}

impl std::fmt::Debug for ClusterMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterMonitor")
            .field("cfg", &self.cfg)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl ClusterMonitor {
    /// Build the client, describe the cluster once, then keep polling in a tokio task (which
    /// ends when the monitor is dropped). An unreachable API at start is not an error: the
    /// status then says not ready and why. Errors only on a bad config.
    pub async fn start(cfg: &CloudHsmConfig) -> Result<Arc<Self>, BackendError> {
        if cfg.cluster_id.trim().is_empty() || cfg.region.trim().is_empty() {
            return Err(BackendError::Internal(
                "cloudhsm config: cluster_id and region are required".into(),
            ));
        }
        if cfg.poll_interval_ms == 0 {
            return Err(BackendError::Internal(
                "cloudhsm config: poll_interval_ms must be > 0".into(),
            ));
        }
        let timeout = Duration::from_millis(cfg.poll_interval_ms.clamp(1000, 10_000));
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(cfg.region.clone()))
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(timeout)
                    .operation_timeout(timeout)
                    .build(),
            );
        if let Some(url) = &cfg.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        let sdk = loader.load().await;
        let monitor = Arc::new(Self {
            cfg: cfg.clone(),
            client: aws_sdk_cloudhsmv2::Client::new(&sdk),
            status: RwLock::new(ClusterStatus {
                ready: false,
                state: None,
                active_hsms: 0,
                reason: Some("cluster not described yet".into()),
            }),
        });
        monitor.refresh().await;
        let weak: Weak<Self> = Arc::downgrade(&monitor);
        let every = Duration::from_millis(cfg.poll_interval_ms);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(m) = weak.upgrade() else { break };
                m.refresh().await;
            }
        });
        Ok(monitor)
    }

    /// The latest status.
    pub fn status(&self) -> ClusterStatus {
        self.status
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Describe the cluster now, store and return the new status.
    pub async fn refresh(&self) -> ClusterStatus {
        let status = match self.describe().await {
            Ok(cluster) => evaluate(cluster.as_ref(), self.cfg.min_active_hsms),
            Err(why) => ClusterStatus {
                ready: false,
                state: None,
                active_hsms: 0,
                reason: Some(why),
            },
        };
        *self.status.write().unwrap_or_else(|p| p.into_inner()) = status.clone();
        status
    }

    async fn describe(&self) -> Result<Option<ParsedCluster>, String> {
        let out = self
            .client
            .describe_clusters()
            .filters("clusterIds", vec![self.cfg.cluster_id.clone()])
            .send()
            .await
            .map_err(|e| {
                use aws_sdk_cloudhsmv2::error::ProvideErrorMetadata;
                match e.code() {
                    Some(code) => format!("DescribeClusters failed: {code}"),
                    None => "DescribeClusters failed: CloudHSM API unreachable".to_string(),
                }
            })?;
        Ok(out
            .clusters()
            .iter()
            .find(|c| c.cluster_id() == Some(self.cfg.cluster_id.as_str()))
            .map(ParsedCluster::from_sdk))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn cluster(state: &str, hsms: &[&str]) -> ParsedCluster {
        ParsedCluster {
            cluster_id: "cluster-abc".into(),
            state: state.into(),
            hsm_states: hsms.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn missing_cluster_is_not_ready() {
        let s = evaluate(None, 0);
        assert!(!s.ready);
        assert_eq!(s.state, None);
        assert!(s.reason.unwrap().contains("not found"));
    }

    #[test]
    fn non_active_cluster_is_not_ready() {
        for state in ["DEGRADED", "DELETED", "UNINITIALIZED", "UPDATE_IN_PROGRESS"] {
            let s = evaluate(Some(&cluster(state, &["ACTIVE", "ACTIVE"])), 1);
            assert!(!s.ready, "{state}");
            assert_eq!(s.state.as_deref(), Some(state));
            assert!(s.reason.unwrap().contains(state));
        }
    }

    #[test]
    fn too_few_active_hsms_is_not_ready() {
        let c = cluster("ACTIVE", &["ACTIVE", "CREATE_IN_PROGRESS", "DEGRADED"]);
        let s = evaluate(Some(&c), 2);
        assert!(!s.ready);
        assert_eq!(s.active_hsms, 1);
        assert!(s.reason.unwrap().contains("fewer than the 2 required"));
        let s = evaluate(Some(&cluster("ACTIVE", &[])), 1);
        assert!(!s.ready);
        assert_eq!(s.active_hsms, 0);
    }

    #[test]
    fn enough_active_hsms_is_ready() {
        let c = cluster("ACTIVE", &["ACTIVE", "ACTIVE", "DELETE_IN_PROGRESS"]);
        let s = evaluate(Some(&c), 2);
        assert!(s.ready);
        assert_eq!(s.active_hsms, 2);
        assert_eq!(s.reason, None);
        assert!(evaluate(Some(&cluster("ACTIVE", &[])), 0).ready);
    }

    #[test]
    fn config_defaults() {
        let c: CloudHsmConfig =
            serde_json::from_str(r#"{"cluster_id":"cluster-1","region":"us-east-1"}"#).unwrap();
        assert_eq!(c.min_active_hsms, 1);
        assert_eq!(c.poll_interval_ms, 30_000);
        assert!(
            serde_json::from_str::<CloudHsmConfig>(r#"{"cluster_id":"c","region":"r","x":1}"#)
                .is_err()
        );
    }
}
