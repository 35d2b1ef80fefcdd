//! Store rows as the domain reads them: the one place a stored shard version
//! ([`ShardVersionRow`], the store's record) becomes the [`Envelope`] the domain opens, so the
//! envelope code knows nothing of the database.

use crate::domain::envelope::Envelope;
use shardgate_store::ShardVersionRow;

impl<'a> From<&'a ShardVersionRow> for Envelope<'a> {
    fn from(row: &'a ShardVersionRow) -> Self {
        Envelope {
            account: &row.account,
            shard: &row.shard,
            version: row.version,
            format_version: row.format_version,
            key_ref: &row.key_ref,
            key_version: row.key_version,
            wrapped_dek: &row.wrapped_dek,
            nonce: &row.nonce,
            ciphertext: &row.ciphertext,
            key_commitment: row.key_commitment.as_deref(),
        }
    }
}
