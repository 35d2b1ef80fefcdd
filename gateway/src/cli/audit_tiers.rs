//! What the audit commands that read both tiers (`verify`, `archive`, `search`, `export`)
//! open, written once.

use super::args::ConfigArgs;
use crate::app::config::Config;
use crate::domain::audit::archive::Archive;

/// What the audit commands that read both tiers open: the configuration, the audit key, the
/// store (schema checked) and the archive sink.
pub(crate) struct AuditTiers {
    pub(crate) cfg: Config,
    pub(crate) key: crate::domain::audit::AuditKey,
    pub(crate) store: std::sync::Arc<dyn shardgate_store::Store>,
    pub(crate) sink: std::sync::Arc<dyn crate::domain::audit::archive::ArchiveSink>,
}

impl AuditTiers {
    /// Open them from `config`.
    pub(crate) async fn open(config: &ConfigArgs) -> anyhow::Result<Self> {
        let cfg = Config::load(&config.sources(None))?;
        let key = crate::app::state::audit_key(&cfg)?;
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

    /// The sink with this configuration's key prefix.
    pub(crate) fn archive(&self) -> Archive<'_> {
        Archive {
            sink: self.sink.as_ref(),
            prefix: &self.cfg.audit.archive.prefix,
        }
    }
}
