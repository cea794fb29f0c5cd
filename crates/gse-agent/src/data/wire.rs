//! The data link's batch body with zero-copy payloads.
//!
//! Same tags and types as `DataBatch`/`DataRecord` in
//! `proto/gse/link/v1/data.proto` (a test checks the bytes against the
//! generated types), but payloads are `Bytes`, so a record is copied once,
//! into the frame body, on its way from the local socket to the DataServer.

use bytes::Bytes;

/// One record (`gse.link.v1.DataRecord`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireRecord {
    #[prost(uint32, tag = "1")]
    pub data_id: u32,
    /// When the agent received it, unix ms.
    #[prost(uint64, tag = "2")]
    pub received_ms: u64,
    #[prost(bytes = "bytes", tag = "3")]
    pub payload: Bytes,
}

/// One batch (`gse.link.v1.DataBatch`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireBatch {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(message, repeated, tag = "2")]
    pub records: Vec<WireRecord>,
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn encodes_exactly_like_the_generated_types() {
        let ours = WireBatch {
            seq: 42,
            records: vec![WireRecord {
                data_id: 1001,
                received_ms: 1_700_000_000_123,
                payload: Bytes::from_static(b"{\"a\":1}"),
            }],
        };
        let theirs = gse_proto::link::DataBatch {
            seq: 42,
            records: vec![gse_proto::link::DataRecord {
                data_id: 1001,
                received_ms: 1_700_000_000_123,
                payload: b"{\"a\":1}".to_vec(),
            }],
        };
        assert_eq!(ours.encode_to_vec(), theirs.encode_to_vec());
        let back = WireBatch::decode(Bytes::from(theirs.encode_to_vec())).unwrap();
        assert_eq!(back, ours);
    }
}
