//! Byte-exact upstream frames built from COMPAT §1.2's tables, independent of
//! the codec, for the codec and server tests.

/// libgse's fixed meta area size, "(8+128)*3".
pub const LIBGSE_META_MAX_LEN: u32 = 408;

/// The 24-byte upstream header.
pub fn header(msg_type: u32, data_id: u32, utctime: u32, body_len: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(24);
    for v in [msg_type, data_id, utctime, body_len, 0, 0] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b
}

/// A 0xC01 / 0xC0C frame: header then the raw payload.
pub fn raw(msg_type: u32, data_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = header(msg_type, data_id, 1_700_000_000, payload.len() as u32);
    b.extend_from_slice(payload);
    b
}

/// The 0x0A request as libgse sends it: header only, everything else 0.
pub fn sync_config() -> Vec<u8> {
    header(0x0A, 0, 0, 0)
}

/// A 0x09 frame the way libgse's `NewGseDynamicMsg` + `AddMeta` + `ToBytes`
/// lays it out: extension, a `meta_max_len` area holding the entries then
/// zero fill, payload.
pub fn dynamic(data_id: u32, index: u64, metas: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut area = Vec::new();
    for (k, v) in metas {
        area.extend_from_slice(&(k.len() as u32).to_be_bytes());
        area.extend_from_slice(&(v.len() as u32).to_be_bytes());
        area.extend_from_slice(k.as_bytes());
        area.extend_from_slice(v.as_bytes());
    }
    let meta_len = area.len() as u32;
    assert!(meta_len <= LIBGSE_META_MAX_LEN);
    area.resize(LIBGSE_META_MAX_LEN as usize, 0);
    dynamic_raw(
        data_id,
        index,
        meta_len,
        LIBGSE_META_MAX_LEN,
        metas.len() as u32,
        &area,
        payload,
    )
}

/// A 0x09 frame with every extension field chosen by the caller (for
/// malformed cases); `bodylen = 24 + area.len() + payload.len()`.
pub fn dynamic_raw(
    data_id: u32,
    index: u64,
    meta_len: u32,
    meta_max_len: u32,
    meta_count: u32,
    area: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let body_len = (24 + area.len() + payload.len()) as u32;
    let mut b = header(0x09, data_id, 1_700_000_000, body_len);
    b.extend_from_slice(&index.to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes()); // flags
    for v in [meta_len, meta_max_len, meta_count] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.extend_from_slice(area);
    b.extend_from_slice(payload);
    b
}
