//! `shardgate audit export`: an account's events for an auditor, in a new directory that
//! verifies offline with the audit key alone (docs/audit-archive.md, "Export"):
//!
//! - `events.ndjson`: every matching event, hot and archived, in order (as the search API
//!   gives them, with `prev_tag` and `tag`);
//! - `segments/…`: every archived segment (manifest and object) that holds one of them, as
//!   stored in the sink (`verify_audit_segment.py` checks each);
//! - `anchors/…`: the latest anchor of every chain involved;
//! - `README.txt`: what is there and how to check it.

use super::args::ConfigArgs;
use crate::domain::audit::archive::anchors::read_anchors;
use crate::service::audit_search::{search, AuditEventView, Tier};
use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

const README: &str = "shardgate audit export\n\n\
events.ndjson  the account's events in (ts_ms, chain_id, seq) order; tier says where each was found\n\
segments/      the archived segments holding the archived ones: check each with\n\
               python3 verify_audit_segment.py AUDIT_KEY_FILE X.manifest X.sgseg (FORMAT.md, \"Audit segments\")\n\
anchors/       the latest anchor (HMAC'd chain head) of each chain involved (FORMAT.md, \"Audit checkpoints\")\n\
Hot events are not in a segment yet: each one's tag is HMAC-SHA256(audit_key, canonical) over the\n\
fields it lists (FORMAT.md, \"Audit events\"), and prev_tag links it to the one before it in its chain.\n";

/// Write `path` under `out` (creating its folders 0700), refusing to replace anything.
fn write_new(out: &Path, rel: &str, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = out.join(rel);
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// `audit export`: see the module doc.
pub(crate) async fn audit_export(
    config: &ConfigArgs,
    mut q: shardgate_store::AuditQuery,
    out: &Path,
) -> anyhow::Result<ExitCode> {
    use std::os::unix::fs::DirBuilderExt;
    let t = super::audit_tiers::AuditTiers::open(config).await?;
    let (key, store, sink, archive) = (&t.key, &t.store, &t.sink, t.archive());
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(out)
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: {e} (the export directory must not exist)",
                out.display()
            )
        })?;
    let (mut events, mut chains, mut archived) = (Vec::new(), BTreeSet::new(), BTreeSet::new());
    let mut count = 0u64;
    loop {
        q.limit = 1000;
        let page = search(store.as_ref(), archive, key, &q, t.retention_ms()).await?;
        for (r, tier) in page.events {
            chains.insert(r.chain_id.clone());
            if tier == Tier::Archived {
                archived.insert((r.chain_id.clone(), r.seq));
            }
            serde_json::to_writer(&mut events, &AuditEventView::of(r, tier))?;
            events.push(b'\n');
            count += 1;
        }
        let Some(next) = page.next else { break };
        q.after = Some((next.0, next.1, next.2));
    }
    write_new(out, "events.ndjson", &events)?;
    let mut segments = 0usize;
    for chain in &chains {
        for seg in store.audit_segments(chain).await? {
            if archived
                .range((chain.clone(), seg.first_seq)..=(chain.clone(), seg.last_seq))
                .next()
                .is_none()
            {
                continue;
            }
            for k in [&seg.manifest_key, &seg.object_key] {
                let bytes = sink.get(k).await?.ok_or_else(|| {
                    anyhow::anyhow!(
                        "{k} is missing from the archive (run `shardgate audit verify`)"
                    )
                })?;
                write_new(out, k.strip_prefix(archive.prefix).unwrap_or(k), &bytes)?;
            }
            segments += 1;
        }
    }
    let anchors = read_anchors(archive, key).await?;
    let mut anchored = 0usize;
    for (chain, cp) in anchors.iter().filter(|(c, _)| chains.contains(*c)) {
        write_new(
            out,
            &format!("anchors/{chain}/{:020}.anchor", cp.seq),
            cp.line(key).as_bytes(),
        )?;
        anchored += 1;
    }
    write_new(out, "README.txt", README.as_bytes())?;
    println!(
        "audit export: {count} event(s), {segments} archived segment(s), {anchored} anchor(s) in {}",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}
