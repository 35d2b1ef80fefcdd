//! `shardgate audit ...`: `verify` (every chain across its archived segments and hot rows,
//! held against its checkpoints and anchors), `archive` (one archiver pass, `status`,
//! `--apply-lifecycle`), `search`, `credential-id`; `export` is in `audit_export`.

use super::args::*;
use super::audit_tiers::AuditTiers;
use crate::app::config::Config;
use crate::service::audit_archive::{run_pass, ArchivePass};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `shardgate audit ...`.
pub(crate) async fn audit_command(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::CredentialId { config, token_id } => audit_credential_id(&config, token_id),
        AuditCommand::Verify {
            config,
            checkpoints,
            from,
        } => {
            let (from_ms, _) = time_range(from.as_deref(), None)?;
            audit_verify(&config, checkpoints, from_ms).await
        }
        AuditCommand::Archive {
            command: Some(ArchiveCommand::Status { config }),
            ..
        } => audit_archive_status(&config).await,
        AuditCommand::Archive {
            command: None,
            config,
            older_than,
            rate,
            apply_lifecycle,
        } => {
            if apply_lifecycle {
                audit_apply_lifecycle(&config).await?;
            }
            audit_archive(&config, older_than.map(Into::into), rate).await
        }
        AuditCommand::Search {
            config,
            account,
            shard,
            action,
            outcome,
            from,
            to,
            limit,
        } => {
            let (from_ms, to_ms) = time_range(from.as_deref(), to.as_deref())?;
            let q = shardgate_store::AuditQuery {
                account,
                shard,
                action,
                outcome,
                from_ms,
                to_ms,
                ..Default::default()
            };
            audit_search(&config, q, limit).await
        }
        AuditCommand::Export {
            config,
            account,
            from,
            to,
            out,
        } => {
            let (from_ms, to_ms) = time_range(from.as_deref(), to.as_deref())?;
            let q = shardgate_store::AuditQuery {
                account: Some(account),
                from_ms,
                to_ms,
                ..Default::default()
            };
            super::audit_export::audit_export(&config, q, &out).await
        }
    }
}

/// `--from` and `--to` (RFC 3339 or unix milliseconds) as unix milliseconds.
fn time_range(from: Option<&str>, to: Option<&str>) -> anyhow::Result<(Option<i64>, Option<i64>)> {
    let ms = |name: &str, v: Option<&str>| -> anyhow::Result<Option<i64>> {
        Ok(v.map(|v| crate::service::audit_search::time_ms(name, v))
            .transpose()?)
    };
    Ok((ms("--from", from)?, ms("--to", to)?))
}

/// `audit credential-id`: the `credential` value the audit log records for a token id (or
/// the token itself, read from stdin so that it never sits in shell history).
fn audit_credential_id(config: &ConfigArgs, token_id: Option<String>) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(&config.sources(None))?;
    let key = crate::app::state::audit_key(&cfg)?;
    let id = match token_id {
        Some(id) => id.trim().to_ascii_lowercase(),
        None => {
            let mut line = zeroize::Zeroizing::new(String::new());
            std::io::stdin().read_line(&mut line)?;
            crate::domain::auth::token_id(&crate::domain::auth::hash_token(line.trim()))
        }
    };
    println!("{}", crate::domain::auth::credential_id(&key, &id));
    Ok(ExitCode::SUCCESS)
}

/// `audit verify`: every chain, held against the latest checkpoints of `files` (default:
/// this configuration's checkpoint file when it exists).
pub(crate) async fn audit_verify(
    config: &ConfigArgs,
    mut files: Vec<PathBuf>,
    from_ms: Option<i64>,
) -> anyhow::Result<ExitCode> {
    use crate::domain::audit::VerifyError;
    let t = AuditTiers::open(config).await?;
    let (cfg, key, store, archive) = (&t.cfg, &t.key, &t.store, t.archive());
    if files.is_empty() && cfg.checkpoint_file().exists() {
        files.push(cfg.checkpoint_file());
    }
    let latest = match crate::domain::audit::checkpoints::read_latest(&files, key) {
        Ok(l) => l,
        Err(b) => {
            println!("AUDIT BROKEN: {b}");
            return Ok(ExitCode::from(2));
        }
    };
    use crate::domain::audit::archive::anchors::{merge_latest, read_anchors, AnchorError};
    let anchors = match read_anchors(archive, key).await {
        Ok(a) => a,
        Err(AnchorError::Broken(b)) => {
            println!("AUDIT BROKEN: {b}");
            return Ok(ExitCode::from(2));
        }
        Err(AnchorError::Sink(e)) => return Err(e.into()),
    };
    let anchored = anchors.len();
    let latest = merge_latest(latest, anchors);
    let retention_ms = i64::from(cfg.audit.archive.retention_days).saturating_mul(86_400_000);
    let from = crate::domain::audit::archive::WalkFrom {
        from_ms,
        expired_before_ms: crate::now_ms().saturating_sub(retention_ms),
    };
    match crate::domain::audit::verify_tiers_from(
        store.as_ref(),
        Some((archive, from)),
        key,
        &latest,
    )
    .await
    {
        Ok(r) => {
            println!(
                "audit ok: {} chain(s), {} event(s) verified ({} from {} archived segment(s)), {} checkpointed chain(s) from {} file(s) and {} anchored chain(s)",
                r.chains,
                r.events,
                r.archived_events,
                r.segments,
                r.checkpoints,
                files.len(),
                anchored
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(VerifyError::Broken(b)) => {
            println!("AUDIT BROKEN: {b}");
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}

/// `audit archive`: one pass of the archiver over every chain, keeping events younger than
/// `older_than` (default `[audit.archive] hot_days`) hot, at most `rate` events a second
/// (default `[audit.archive] rate_per_sec`; 0: unpaced), then deleting the directory sink's
/// segments whose `retention_days` ended (audited on this command's own chain).
pub(crate) async fn audit_archive(
    config: &ConfigArgs,
    older_than: Option<Duration>,
    rate: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let t = AuditTiers::open(config).await?;
    let (key, store, archive) = (&t.key, &t.store, t.archive());
    let a = &t.cfg.audit.archive;
    let keep = older_than.unwrap_or(Duration::from_secs(u64::from(a.hot_days) * 86_400));
    let pass = ArchivePass {
        cutoff_ms: crate::now_ms()
            .saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX)),
        max_events: a.segment_max_events,
        max_bytes: a.segment_max_bytes,
        holder: format!(
            "cli:{}:{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".into()),
            std::process::id()
        ),
        lease_ms: i64::try_from(a.lease_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
        retention_ms: t.retention_ms(),
        rate_per_sec: rate.unwrap_or(a.rate_per_sec),
    };
    let progress = |s: &shardgate_store::AuditSegment| {
        eprintln!(
            "archived {}:{}..{} ({} events) -> {}",
            s.chain_id,
            s.first_seq,
            s.last_seq,
            s.count(),
            s.manifest_key
        );
    };
    let auditor = t.auditor().await?;
    let origin = crate::domain::audit::Origin::cli();
    let expiry = crate::service::audit_expire::Expiry {
        auditor: &auditor,
        origin: &origin,
    };
    let result = run_pass(store.as_ref(), archive, key, &pass, Some(expiry), &progress).await;
    // The events of this run (deletions) are checkpointed and anchored, also after a failure.
    auditor.checkpoint().await;
    let r = result?;
    println!(
        "audit archive: {} segment(s) recorded ({} adopted from a stopped pass), {} event(s) moved out of the hot table, {} byte(s) written to {}, {} expired segment(s) deleted",
        r.segments,
        r.adopted,
        r.events,
        r.bytes,
        archive.sink.describe(),
        r.expired_segments
    );
    Ok(ExitCode::SUCCESS)
}

/// `audit search`: every matching event, page by page, as NDJSON on stdout (at most `limit`).
pub(crate) async fn audit_search(
    config: &ConfigArgs,
    mut q: shardgate_store::AuditQuery,
    limit: Option<u64>,
) -> anyhow::Result<ExitCode> {
    use crate::service::audit_search::{search, AuditEventView};
    use std::io::Write as _;
    let t = AuditTiers::open(config).await?;
    let (key, store, archive) = (&t.key, &t.store, t.archive());
    let mut left = limit.unwrap_or(u64::MAX);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    while left > 0 {
        q.limit = i64::try_from(left.min(1000)).unwrap_or(1000);
        let page = search(store.as_ref(), archive, key, &q, t.retention_ms()).await?;
        for (r, tier) in page.events {
            serde_json::to_writer(&mut out, &AuditEventView::of(r, tier))?;
            out.write_all(b"\n")?;
            left -= 1;
        }
        let Some(next) = page.next else { break };
        q.after = Some((next.0, next.1, next.2));
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The S3 sink of a configuration (`sink = "s3"`), for what only S3 has (lifecycle).
async fn s3_sink(
    cfg: &Config,
) -> anyhow::Result<(
    crate::domain::audit::archive::S3Sink,
    &crate::domain::audit::archive::S3SinkConfig,
)> {
    match &cfg.audit.archive.s3 {
        Some(s3) if cfg.audit.archive.sink == "s3" => Ok((
            crate::domain::audit::archive::S3Sink::connect(s3).await?,
            s3,
        )),
        _ => anyhow::bail!(
            "--apply-lifecycle needs [audit.archive] sink = \"s3\" (the directory sink has no lifecycle)"
        ),
    }
}

/// `audit archive --apply-lifecycle`: put the lifecycle configuration on the bucket and show
/// what the bucket holds now.
pub(crate) async fn audit_apply_lifecycle(config: &ConfigArgs) -> anyhow::Result<()> {
    let cfg = Config::load(&config.sources(None))?;
    let (sink, s3) = s3_sink(&cfg).await?;
    let prefix = cfg.audit.archive.prefix.clone();
    let rules =
        crate::domain::audit::archive::s3::lifecycle(&prefix, s3, cfg.audit.archive.retention_days)
            .map_err(|e| anyhow::anyhow!("lifecycle: {e}"))?;
    sink.apply_lifecycle(rules).await?;
    for line in sink.lifecycle_rules().await? {
        eprintln!("lifecycle applied: {line}");
    }
    Ok(())
}

/// `audit archive status`.
pub(crate) async fn audit_archive_status(config: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(&config.sources(None))?;
    let store = crate::app::state::open_store(&cfg, 2).await?;
    crate::app::state::prepare_schema(&cfg, store.as_ref()).await?;
    let sink = crate::app::state::archive_sink(&cfg).await?;
    let (mut segments, mut bytes, mut oldest) = (0usize, 0i64, None::<i64>);
    for chain in store.audit_chains().await? {
        let recorded = store.audit_segments(&chain).await?;
        segments += recorded.len();
        bytes += recorded.iter().map(|s| s.object_bytes).sum::<i64>();
        if let Some(first) = store.audit_events(&chain, i64::MIN, 1).await?.first() {
            oldest = Some(oldest.map_or(first.ts_ms, |o| o.min(first.ts_ms)));
        }
    }
    let a = &cfg.audit.archive;
    println!("sink: {} (prefix {:?})", sink.describe(), a.prefix);
    println!("archived: {segments} segment(s), {bytes} byte(s)");
    match oldest {
        Some(ts) => println!(
            "oldest hot event: {} ({} day(s) old; hot_days = {})",
            humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ts).unwrap_or(0))
            ),
            (crate::now_ms() - ts) / 86_400_000,
            a.hot_days
        ),
        None => println!("oldest hot event: none (the hot table is empty)"),
    }
    println!(
        "retention: {} day(s) after a segment's newest event",
        a.retention_days
    );
    if a.sink == "s3" {
        let (s3, _) = s3_sink(&cfg).await?;
        println!(
            "object lock: {}",
            if s3.locks_objects().await? {
                "on"
            } else {
                "off (the bucket has no Object Lock)"
            }
        );
        let rules = s3.lifecycle_rules().await?;
        if rules.is_empty() {
            println!("lifecycle: none (apply it with `shardgate audit archive --apply-lifecycle`)");
        }
        for r in rules {
            println!("lifecycle: {r}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
