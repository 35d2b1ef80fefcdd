//! What the audit commands that read both tiers (`verify`, `archive`, `search`, `export`)
//! open, written once.

use super::args::ConfigArgs;
use crate::app::config::Config;
use crate::domain::audit::archive::Archive;

/// What the audit commands that read both tiers open: the configuration, the audit key, the
/// store (schema checked) and the archive sink.
pub(crate) struct AuditTiers {
    pub(crate) cfg: Config,
    pub(crate) key: std::sync::Arc<crate::domain::audit::AuditKey>,
    pub(crate) store: std::sync::Arc<dyn shardgate_store::Store>,
    pub(crate) sink: std::sync::Arc<dyn crate::domain::audit::archive::ArchiveSink>,
}

impl AuditTiers {
    /// Open them from `config`.
    pub(crate) async fn open(config: &ConfigArgs) -> anyhow::Result<Self> {
        let cfg = Config::load(&config.sources(None))?;
        let key = std::sync::Arc::new(crate::app::state::audit_key(&cfg)?);
        let store = crate::app::state::open_store(&cfg, 2).await?;
        crate::app::state::prepare_schema(&cfg, store.as_ref()).await?;
        let sink = crate::app::state::archive_sink(&cfg).await?;
        Ok(Self {
            cfg,
            key,
            store,
            sink,
        })
    }

    /// This command's own audit chain, for the commands that change something (`archive`
    /// deletes expired segments): started like the gateway's, checkpointed to the same file
    /// and anchored in the same archive; registered only when it writes its first event.
    pub(crate) async fn auditor(
        &self,
    ) -> anyhow::Result<std::sync::Arc<crate::domain::audit::Auditor>> {
        let auditor =
            crate::app::state::start_auditor(&self.cfg, self.store.clone(), self.key.clone())
                .await?;
        auditor.anchor_to(self.sink.clone(), self.cfg.audit.archive.prefix.clone());
        Ok(auditor)
    }

    /// The sink with this configuration's key prefix.
    pub(crate) fn archive(&self) -> Archive<'_> {
        Archive {
            sink: self.sink.as_ref(),
            prefix: &self.cfg.audit.archive.prefix,
        }
    }

    /// How long segments are kept after their newest event (`retention_days`).
    pub(crate) fn retention_ms(&self) -> i64 {
        i64::from(self.cfg.audit.archive.retention_days).saturating_mul(86_400_000)
    }
}
