//! The agent-info JSON that answers a 0x0A request (COMPAT §1.2): exactly
//! the keys libgse and the SDK read, from an [`AgentInfo`] the agent fills.
//!
//! `cloudid` and `cloud_id` are both sent (libgse reads one, the SDK the
//! other); `bizid` and `bk_biz_id` carry the same value. Integers are `i32`
//! because libgse decodes into `int32` and a wider value would fail its whole
//! decode. `hostid` has no json tag in libgse; Go matches keys
//! case-insensitively, so `hostid` fills `HostID` (same for `hostname`).

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use tokio_util::codec::Encoder;

use super::ipc_codec::{DownFrame, IpcCodec, MSG_TYPE_SYNC_CONFIG};

/// Largest reply body sent. libgse reads the body with a single `Read`, so
/// the reply must stay small; real ones are ~250 bytes.
pub const MAX_REPLY_BODY: usize = 16 * 1024;

/// What the agent tells local collectors about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentInfo {
    /// Sent as `bizid` and `bk_biz_id`.
    pub bk_biz_id: i32,
    /// Sent as `cloudid` and `cloud_id`.
    pub cloud_id: i32,
    pub ip: String,
    pub bk_agent_id: String,
    pub bk_tenant_id: String,
    pub static_dataid: i32,
    /// Sent as `hostid` (CMDB `bk_host_id`).
    pub host_id: i32,
    /// Sent as `hostname`; libgse overwrites it with its own anyway.
    pub hostname: String,
}

/// Why an [`AgentInfo`] cannot be sent.
#[derive(Debug, thiserror::Error)]
pub enum AgentInfoError {
    #[error("agent info has neither ip nor bk_agent_id; collectors would treat it as not ready")]
    Empty,
    #[error("agent info reply body is {len} bytes, over the {MAX_REPLY_BODY}-byte limit")]
    TooLarge { len: usize },
    #[error("encoding agent info as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The JSON object on the wire, keys in this order.
#[derive(Serialize)]
struct Wire<'a> {
    bizid: i32,
    bk_biz_id: i32,
    cloudid: i32,
    cloud_id: i32,
    ip: &'a str,
    bk_agent_id: &'a str,
    bk_tenant_id: &'a str,
    static_dataid: i32,
    hostid: i32,
    hostname: &'a str,
}

// === impl AgentInfo ===

impl AgentInfo {
    /// Refuses info that libgse's `IsEmpty` would reject (no ip, no agent id).
    pub fn validate(&self) -> Result<(), AgentInfoError> {
        if self.ip.is_empty() && self.bk_agent_id.is_empty() {
            return Err(AgentInfoError::Empty);
        }
        Ok(())
    }

    /// The reply body: validated JSON with every key collectors read.
    pub fn to_json(&self) -> Result<Vec<u8>, AgentInfoError> {
        self.validate()?;
        let body = serde_json::to_vec(&Wire {
            bizid: self.bk_biz_id,
            bk_biz_id: self.bk_biz_id,
            cloudid: self.cloud_id,
            cloud_id: self.cloud_id,
            ip: &self.ip,
            bk_agent_id: &self.bk_agent_id,
            bk_tenant_id: &self.bk_tenant_id,
            static_dataid: self.static_dataid,
            hostid: self.host_id,
            hostname: &self.hostname,
        })?;
        if body.len() > MAX_REPLY_BODY {
            return Err(AgentInfoError::TooLarge { len: body.len() });
        }
        Ok(body)
    }

    /// The whole 0x0A reply, 8-byte header and body in one buffer, to be
    /// written with a single write (libgse reads header and body with one
    /// `Read` each and does not loop).
    pub fn encode_reply(&self) -> Result<Bytes, AgentInfoError> {
        let body = self.to_json()?;
        let mut buf = BytesMut::new();
        IpcCodec::default()
            .encode(
                DownFrame {
                    msg_type: MSG_TYPE_SYNC_CONFIG,
                    body: body.into(),
                },
                &mut buf,
            )
            .expect("a body under MAX_REPLY_BODY fits a u32 length");
        Ok(buf.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> AgentInfo {
        AgentInfo {
            bk_biz_id: 2,
            cloud_id: 0,
            ip: "10.0.0.5".into(),
            bk_agent_id: "0100005254008ed86116666614661851".into(),
            bk_tenant_id: "system".into(),
            static_dataid: 1001,
            host_id: 42,
            hostname: "web-1".into(),
        }
    }

    #[test]
    fn json_has_exactly_the_compat_keys() {
        let v: serde_json::Value = serde_json::from_slice(&info().to_json().unwrap()).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "bizid",
                "bk_agent_id",
                "bk_biz_id",
                "bk_tenant_id",
                "cloud_id",
                "cloudid",
                "hostid",
                "hostname",
                "ip",
                "static_dataid"
            ]
        );
        assert_eq!(v["bizid"], 2);
        assert_eq!(v["bk_biz_id"], 2);
        assert_eq!(v["cloudid"], 0);
        assert_eq!(v["cloud_id"], 0);
        assert_eq!(v["hostid"], 42);
        assert_eq!(v["static_dataid"], 1001);
        assert_eq!(v["ip"], "10.0.0.5");
    }

    #[test]
    fn empty_info_is_refused_but_either_identity_suffices() {
        assert!(matches!(
            AgentInfo::default().to_json(),
            Err(AgentInfoError::Empty)
        ));
        let only_ip = AgentInfo {
            ip: "10.0.0.5".into(),
            ..Default::default()
        };
        only_ip.validate().unwrap();
        let only_id = AgentInfo {
            bk_agent_id: "abc".into(),
            ..Default::default()
        };
        only_id.validate().unwrap();
    }

    #[test]
    fn reply_is_8_byte_header_then_body() {
        let reply = info().encode_reply().unwrap();
        let body = info().to_json().unwrap();
        assert_eq!(&reply[..4], &0x0Au32.to_be_bytes());
        assert_eq!(&reply[4..8], &(body.len() as u32).to_be_bytes());
        assert_eq!(&reply[8..], &body[..]);
    }

    #[test]
    fn oversized_info_is_refused() {
        let big = AgentInfo {
            hostname: "h".repeat(MAX_REPLY_BODY),
            ..info()
        };
        assert!(matches!(
            big.encode_reply(),
            Err(AgentInfoError::TooLarge { .. })
        ));
    }
}
