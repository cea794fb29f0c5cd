use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use super::*;
use crate::data::test_frames::{self, LIBGSE_META_MAX_LEN};

fn decode_all(codec: &mut IpcCodec, bytes: &[u8]) -> Result<Vec<Frame>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(f) = codec.decode(&mut buf)? {
        out.push(f);
    }
    if let Some(f) = codec.decode_eof(&mut buf)? {
        out.push(f);
    }
    Ok(out)
}

fn one(bytes: &[u8]) -> Result<Frame, DecodeError> {
    let mut frames = decode_all(&mut IpcCodec::default(), bytes)?;
    assert_eq!(frames.len(), 1, "{frames:?}");
    Ok(frames.remove(0))
}

fn record(frame: Frame) -> Record {
    match frame {
        Frame::Record(r) => r,
        other => panic!("expected a record, got {other:?}"),
    }
}

#[test]
fn libgse_dynamic_frame_is_24_24_408_payload() {
    let payload = br#"{"dataid":1001,"data":[]}"#;
    let bytes = test_frames::dynamic(1001, 0, &[], payload);
    assert_eq!(bytes.len(), 24 + 24 + 408 + payload.len());
    assert_eq!(
        &bytes[12..16],
        &((24 + 408 + payload.len()) as u32).to_be_bytes()
    );
    let r = record(one(&bytes).unwrap());
    assert_eq!(r.kind, RecordKind::Dynamic);
    assert_eq!(r.data_id, 1001);
    assert_eq!(r.utctime, 1_700_000_000);
    assert_eq!(r.index, 0);
    assert!(r.metas.is_empty());
    assert_eq!(&r.payload[..], payload);
}

#[test]
fn dynamic_frame_with_two_metas() {
    let metas = [("bk_tenant_id", "system"), ("k", "")];
    let bytes = test_frames::dynamic(7, 99, &metas, b"{}");
    let r = record(one(&bytes).unwrap());
    assert_eq!(r.index, 99);
    assert_eq!(
        r.metas,
        vec![
            ("bk_tenant_id".to_string(), "system".to_string()),
            ("k".to_string(), String::new())
        ]
    );
    assert_eq!(&r.payload[..], b"{}");
}

#[test]
fn common_and_op_bodies_are_the_payload() {
    let r = record(one(&test_frames::raw(0xC01, 5, b"abc")).unwrap());
    assert_eq!(
        (r.kind, r.data_id, &r.payload[..]),
        (RecordKind::Common, 5, &b"abc"[..])
    );
    let r = record(one(&test_frames::raw(0xC0C, 6, b"{\"op\":1}")).unwrap());
    assert_eq!(r.kind, RecordKind::Op);
    assert_eq!(&r.payload[..], b"{\"op\":1}");
    // An empty payload is still a record.
    let r = record(one(&test_frames::raw(0xC01, 5, b"")).unwrap());
    assert!(r.payload.is_empty());
}

#[test]
fn sync_config_request_is_header_only() {
    assert_eq!(test_frames::sync_config().len(), 24);
    assert_eq!(
        one(&test_frames::sync_config()).unwrap(),
        Frame::AgentInfoRequest
    );
}

#[test]
fn dataid_zero_is_passed_through() {
    let r = record(one(&test_frames::raw(0xC01, 0, b"x")).unwrap());
    assert_eq!(r.data_id, 0);
}

#[test]
fn frames_split_at_every_byte_and_back_to_back() {
    let mut stream = test_frames::dynamic(1, 0, &[("a", "b")], b"payload-1");
    stream.extend(test_frames::sync_config());
    stream.extend(test_frames::raw(0xC0C, 2, b"op"));
    let mut codec = IpcCodec::default();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for b in &stream {
        buf.extend_from_slice(&[*b]);
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            got.push(f);
        }
    }
    assert_eq!(got.len(), 3);
    assert_eq!(&record(got[0].clone()).payload[..], b"payload-1");
    assert_eq!(got[1], Frame::AgentInfoRequest);
    assert_eq!(record(got[2].clone()).data_id, 2);
    assert!(buf.is_empty());
}

#[test]
fn oversized_body_is_refused_from_the_header_alone() {
    let mut codec = IpcCodec::new(1024);
    let mut buf = BytesMut::from(&test_frames::header(0xC01, 1, 0, 1025)[..]);
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::BodyTooLarge {
                msg_type: 0xC01,
                body_len: 1025,
                max: 1024
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("1025"));
    // Exactly at the limit is fine.
    let at_limit = test_frames::raw(0xC01, 1, &[b'x'; 1024]);
    assert_eq!(decode_all(&mut codec, &at_limit).unwrap().len(), 1);
}

#[test]
fn unknown_type_is_refused() {
    let err = one(&test_frames::raw(0x7777, 1, b"x")).unwrap_err();
    assert!(matches!(
        err,
        DecodeError::UnknownType {
            msg_type: 0x7777,
            body_len: 1
        }
    ));
    assert!(err.to_string().contains("0x7777"), "{err}");
    // Types defined by libgse but never sent are refused too.
    assert!(one(&test_frames::raw(0x02, 1, b"")).is_err());
}

#[test]
fn dynamic_too_short_for_extension() {
    let mut bytes = test_frames::header(0x09, 1, 0, 10);
    bytes.extend([0u8; 10]);
    assert!(matches!(
        one(&bytes),
        Err(DecodeError::DynamicTooShort { body_len: 10 })
    ));
}

#[test]
fn meta_max_len_past_body_is_refused() {
    // 408 declared, only 100 bytes of area + payload follow.
    let bytes = test_frames::dynamic_raw(1, 0, 0, LIBGSE_META_MAX_LEN, 0, &[0; 90], b"0123456789");
    let err = one(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::MetaAreaTooLarge {
                meta_max_len: 408,
                available: 100,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn meta_len_over_meta_max_len_is_refused() {
    let bytes = test_frames::dynamic_raw(1, 0, 409, LIBGSE_META_MAX_LEN, 0, &[0; 408], b"{}");
    let err = one(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::MetaLenTooLarge {
                meta_len: 409,
                meta_max_len: 408
            }
        ),
        "{err}"
    );
}

#[test]
fn meta_entries_overflowing_meta_len_are_refused() {
    // One entry claims a 100-byte key inside a 20-byte metaLen.
    let mut area = vec![0u8; 408];
    area[..4].copy_from_slice(&100u32.to_be_bytes());
    area[4..8].copy_from_slice(&2u32.to_be_bytes());
    let bytes = test_frames::dynamic_raw(1, 0, 20, 408, 1, &area, b"{}");
    let err = one(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::MetaEntryOverflow {
                entry: 0,
                needed: 110,
                remaining: 20,
                ..
            }
        ),
        "{err}"
    );
    // metaCount larger than the entries present (prefix does not fit).
    let bytes = test_frames::dynamic_raw(1, 0, 0, 408, 3, &[0; 408], b"{}");
    assert!(matches!(
        one(&bytes),
        Err(DecodeError::MetaEntryOverflow { entry: 0, .. })
    ));
    // A huge metaCount does not allocate: it fails on the first missing entry.
    let bytes = test_frames::dynamic_raw(1, 0, 0, 408, u32::MAX, &[0; 408], b"{}");
    assert!(one(&bytes).is_err());
    // Lengths near u32::MAX do not overflow the arithmetic.
    let mut area = vec![0u8; 408];
    area[..4].copy_from_slice(&u32::MAX.to_be_bytes());
    area[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    let bytes = test_frames::dynamic_raw(1, 0, 408, 408, 1, &area, b"{}");
    assert!(matches!(
        one(&bytes),
        Err(DecodeError::MetaEntryOverflow { .. })
    ));
}

#[test]
fn non_utf8_meta_is_refused() {
    let mut area = vec![0u8; 408];
    area[..4].copy_from_slice(&1u32.to_be_bytes());
    area[4..8].copy_from_slice(&1u32.to_be_bytes());
    area[8] = b'k';
    area[9] = 0xFF;
    let bytes = test_frames::dynamic_raw(1, 0, 10, 408, 1, &area, b"{}");
    assert!(matches!(
        one(&bytes),
        Err(DecodeError::MetaNotUtf8 { entry: 0 })
    ));
}

#[test]
fn custom_meta_max_len_is_honoured() {
    // A sender with a smaller meta area: payload starts right after it.
    let bytes = test_frames::dynamic_raw(1, 0, 0, 16, 0, &[0; 16], b"data");
    assert_eq!(&record(one(&bytes).unwrap()).payload[..], b"data");
}

#[test]
fn eof_mid_header_and_mid_body_are_errors() {
    let err = one(&test_frames::sync_config()[..10]).unwrap_err();
    assert!(
        matches!(err, DecodeError::TruncatedHeader { buffered: 10 }),
        "{err}"
    );
    let frame = test_frames::raw(0xC01, 1, b"hello");
    let err = one(&frame[..26]).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::TruncatedFrame {
                msg_type: 0xC01,
                buffered: 26,
                expected: 29
            }
        ),
        "{err}"
    );
    assert!(
        decode_all(&mut IpcCodec::default(), b"")
            .unwrap()
            .is_empty()
    );
}

#[test]
fn encoder_writes_8_byte_header_then_body() {
    let mut buf = BytesMut::new();
    IpcCodec::default()
        .encode(
            DownFrame {
                msg_type: 0x0A,
                body: Bytes::from_static(b"{\"ip\":\"1\"}"),
            },
            &mut buf,
        )
        .unwrap();
    assert_eq!(&buf[..8], &[0, 0, 0, 0x0A, 0, 0, 0, 10]);
    assert_eq!(&buf[8..], b"{\"ip\":\"1\"}");
}
