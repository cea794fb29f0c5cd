//! `DataBatch` as the DataServer decodes it: the same tags as
//! `proto/gse/link/v1/data.proto`, but payloads are `Bytes` slices of the
//! frame body (no copy per record). A test checks it against the generated
//! types.

use bytes::Bytes;

/// `gse.link.v1.DataRecord`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireRecord {
    #[prost(uint32, tag = "1")]
    pub data_id: u32,
    #[prost(uint64, tag = "2")]
    pub received_ms: u64,
    #[prost(bytes = "bytes", tag = "3")]
    pub payload: Bytes,
}

/// `gse.link.v1.DataBatch`.
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
    fn decodes_what_the_generated_types_encode() {
        let theirs = gse_proto::link::DataBatch {
            seq: 9,
            records: vec![gse_proto::link::DataRecord {
                data_id: 7,
                received_ms: 5,
                payload: b"hello".to_vec(),
            }],
        };
        let ours = WireBatch::decode(Bytes::from(theirs.encode_to_vec())).unwrap();
        assert_eq!(ours.seq, 9);
        assert_eq!(&ours.records[0].payload[..], b"hello");
        assert_eq!(ours.encode_to_vec(), theirs.encode_to_vec());
    }
}
