//! The file role's metrics. Labels are bounded: `code` is one of the codes
//! in [`super::codes`] or `other`, never an agent or a transfer id.

use std::collections::BTreeMap;

use super::codes::code_label;

/// Transfers started.
pub const TRANSFERS_TOTAL: &str = "gse_file_transfers_total";
/// Piece bytes handed from a source to a requester through this node.
pub const BYTES_RELAYED_TOTAL: &str = "gse_file_bytes_relayed_total";
/// Entries (uploads and downloads) that reached a final state, by code.
pub const ENTRIES_FINAL_TOTAL: &str = "gse_file_entries_final_total";
/// Batches of transfers written to the state store, and how long each took.
pub const STORE_FLUSH_SECONDS: &str = "gse_file_store_flush_seconds";
/// Batches the state store refused (they are retried).
pub const STORE_FAILURES_TOTAL: &str = "gse_file_store_failures_total";

pub fn transfer_started() {
    ::metrics::counter!(TRANSFERS_TOTAL).increment(1);
}

pub fn bytes_relayed(n: u64) {
    ::metrics::counter!(BYTES_RELAYED_TOTAL).increment(n);
}

/// Counts final entries, one counter update per code present.
pub fn entries_final(codes: &[i32]) {
    if codes.is_empty() {
        return;
    }
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    for &c in codes {
        *counts.entry(code_label(c)).or_default() += 1;
    }
    for (code, n) in counts {
        ::metrics::counter!(ENTRIES_FINAL_TOTAL, "code" => code).increment(n);
    }
}
