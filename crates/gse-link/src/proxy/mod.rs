//! The proxy link (issue 12, C2), written once for both ends that accept
//! one (a node's agent link, and a gse-proxy whose lower proxies in a
//! chain dial it) and the one end that dials (gse-proxy).
//!
//! A proxy's first frame is `ProxyHello` ([`check_hello`]); then each agent
//! below it is a channel: `ProxyOpen` (what the agent's certificate names,
//! [`open_frame`] / [`open_identity`]), its frames both ways wrapped as
//! `ProxyData` ([`wrap`] / [`unwrap`]), `ProxyClose` ([`close_frame`]). The
//! inner frame travels as its header and body bytes: no proxy decodes an
//! agent's body.

pub mod mux;

use std::net::SocketAddr;

use gse_core::AgentKey;
use gse_core::certs::{CertKind, IdentityMark, read_mark};
use gse_proto::link::{ProxyClose, ProxyData, ProxyHello, ProxyOpen};
use gse_proto::{Frame, MsgType};
use rustls::pki_types::CertificateDer;

/// Proxies below the first one an agent's way may pass (a chain's depth).
pub const MAX_CHAIN: usize = 8;

/// What a proxy's certificate allows: `Some(None)` any area, `Some(Some(n))`
/// area `n` only; `None` when the certificate is not marked as a proxy's
/// (an unmarked legacy certificate never is).
pub fn proxy_mark(certs: Option<&[CertificateDer<'_>]>) -> Option<Option<i64>> {
    let der = certs?.first()?;
    match read_mark(der) {
        Ok(Some(m)) if m.kind == CertKind::Proxy => Some(m.area),
        _ => None,
    }
}

/// A `ProxyHello` that passed [`check_hello`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub proxy_id: String,
    /// The cloud area the proxy serves (never 0).
    pub area: i64,
    /// Where the area's agents reach the proxy: their parent.
    pub agent_addr: SocketAddr,
}

/// Whether `id` can name a proxy: 1 to 128 letters, digits, '.', '-',
/// '_' or ':' (it is kept in the agent's location).
pub fn proxy_id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
}

/// Checks a proxy's hello, from a peer whose certificate allows
/// `cert_area` ([`proxy_mark`]); the refusal in words.
pub fn check_hello(h: ProxyHello, cert_area: Option<i64>) -> Result<Hello, String> {
    if !proxy_id_ok(&h.proxy_id) {
        return Err(format!(
            "proxy_id {:?} is not an id: 1 to 128 letters, digits, '.', '-', '_' or ':'",
            h.proxy_id
        ));
    }
    if h.bk_cloud_id <= 0 {
        return Err(format!(
            "bk_cloud_id {} is not a cloud area a proxy serves (the servers' own area 0 needs none)",
            h.bk_cloud_id
        ));
    }
    // A certificate bound to an area serves that area only.
    if let Some(area) = cert_area
        && area != h.bk_cloud_id
    {
        return Err(format!(
            "this proxy's certificate is for cloud area {area} (gse://proxy/{area}), not {}; issue one for that area with `gse-server certs issue --proxy-area {}`",
            h.bk_cloud_id, h.bk_cloud_id
        ));
    }
    let agent_addr = h.agent_addr.parse().map_err(|e| {
        format!(
            "agent_addr {:?} is not ip:port ({e}): it is what the area's agents are told their parent is",
            h.agent_addr
        )
    })?;
    Ok(Hello {
        proxy_id: h.proxy_id,
        area: h.bk_cloud_id,
        agent_addr,
    })
}

/// Why a channel's proxy path cannot be taken, if it cannot.
pub fn bad_via(via: &[String]) -> Option<String> {
    if via.len() > MAX_CHAIN {
        return Some(format!(
            "the agent's way passes {} proxies below this one; at most {MAX_CHAIN}",
            via.len()
        ));
    }
    via.iter()
        .find(|id| !proxy_id_ok(id))
        .map(|id| format!("{id:?} in the agent's proxy path is not a proxy id"))
}

/// `ProxyOpen` for an agent at `peer`, connected to the sender at
/// `parent` (the sender's agent address; its data listener `data`, if it
/// relays data), whose certificate names `identity` (a per-agent
/// certificate).
pub fn open_frame(
    chan: u64,
    (peer, parent, data): (SocketAddr, SocketAddr, Option<SocketAddr>),
    identity: Option<&IdentityMark>,
) -> Frame {
    let mut open = ProxyOpen {
        chan,
        peer_addr: peer.to_string(),
        parent_addr: parent.to_string(),
        data_addr: data.map(|d| d.to_string()).unwrap_or_default(),
        ..ProxyOpen::default()
    };
    if let Some(id) = identity {
        open.cert_identity = true;
        open.cert_cloud_id = id.key.cloud_id;
        open.cert_ip = id.key.ip.to_string();
        open.cert_agent_id = id.agent_id.clone().unwrap_or_default();
    }
    Frame::new(MsgType::ProxyOpen, 0, &open)
}

/// The identity a channel's certificate names, as its `ProxyOpen` says.
pub fn open_identity(open: &ProxyOpen) -> Option<IdentityMark> {
    if !open.cert_identity {
        return None;
    }
    Some(IdentityMark {
        key: AgentKey::new(open.cert_cloud_id, open.cert_ip.parse().ok()?),
        agent_id: (!open.cert_agent_id.is_empty()).then(|| open.cert_agent_id.clone()),
    })
}

/// An agent's `frame` on channel `chan`.
pub fn wrap(chan: u64, frame: Frame) -> Frame {
    let data = ProxyData {
        chan,
        msg_type: frame.msg_type.to_u16().into(),
        stream_id: frame.stream_id,
        body: frame.body,
    };
    Frame::new(MsgType::ProxyData, 0, &data)
}

/// The channel and the agent's frame a `ProxyData` carries.
pub fn unwrap(data: ProxyData) -> Result<(u64, Frame), String> {
    let msg_type = u16::try_from(data.msg_type)
        .map_err(|_| format!("message type {} out of range", data.msg_type))?;
    Ok((
        data.chan,
        Frame {
            msg_type: MsgType::from_u16(msg_type),
            stream_id: data.stream_id,
            body: data.body,
        },
    ))
}

/// `ProxyClose` of `chan`, saying why.
pub fn close_frame(chan: u64, reason: impl Into<String>) -> Frame {
    Frame::new(
        MsgType::ProxyClose,
        0,
        &ProxyClose {
            chan,
            reason: reason.into(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(id: &str, area: i64, addr: &str) -> ProxyHello {
        ProxyHello {
            proxy_id: id.into(),
            bk_cloud_id: area,
            agent_addr: addr.into(),
            version: String::new(),
        }
    }

    #[test]
    fn a_hello_names_an_id_an_area_and_where_agents_reach_the_proxy() {
        let ok = check_hello(hello("pa-1", 7, "10.7.0.1:28668"), None).unwrap();
        assert_eq!((ok.area, ok.agent_addr.port()), (7, 28668));
        assert!(check_hello(hello("pa-1", 7, "10.7.0.1:28668"), Some(7)).is_ok());
        for (bad, cert_area, why) in [
            (hello("", 7, "10.7.0.1:1"), None, "proxy_id"),
            (hello("a/b", 7, "10.7.0.1:1"), None, "proxy_id"),
            (hello("pa", 0, "10.7.0.1:1"), None, "bk_cloud_id 0"),
            (hello("pa", 7, "10.7.0.1"), None, "agent_addr"),
            (hello("pa", 7, "10.7.0.1:1"), Some(8), "--proxy-area 7"),
        ] {
            let e = check_hello(bad, cert_area).expect_err("refused");
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn a_proxy_path_is_a_short_list_of_ids() {
        assert_eq!(bad_via(&["pa-2".into(), "pa-3".into()]), None);
        let long: Vec<String> = (0..=MAX_CHAIN).map(|i| format!("p{i}")).collect();
        assert!(bad_via(&long).unwrap().contains("at most 8"));
        assert!(bad_via(&["x y".into()]).unwrap().contains("not a proxy id"));
    }

    #[test]
    fn frames_and_identities_cross_a_channel_unchanged() {
        let inner = Frame {
            msg_type: MsgType::from_u16(0x0777),
            stream_id: 42,
            body: bytes::Bytes::from_static(b"\x01\x02 not decoded"),
        };
        let outer = wrap(9, inner.clone());
        let data: ProxyData = outer.decode().unwrap();
        assert_eq!(unwrap(data).unwrap(), (9, inner));
        let too_big = ProxyData {
            msg_type: 0x1_0000,
            ..ProxyData::default()
        };
        assert!(unwrap(too_big).unwrap_err().contains("out of range"));

        let id = IdentityMark {
            key: AgentKey::new(7, "10.7.0.9".parse().unwrap()),
            agent_id: Some("a-1".into()),
        };
        let peer = "10.7.0.9:4000".parse().unwrap();
        let parent = "10.7.0.1:28668".parse().unwrap();
        let open: ProxyOpen = open_frame(3, (peer, parent, Some(parent)), Some(&id))
            .decode()
            .unwrap();
        assert_eq!(open_identity(&open), Some(id));
        assert_eq!(open.parent_addr, "10.7.0.1:28668");
        let open: ProxyOpen = open_frame(3, (peer, parent, None), None).decode().unwrap();
        assert_eq!(open_identity(&open), None);
    }
}
