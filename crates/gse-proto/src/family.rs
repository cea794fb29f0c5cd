//! Message-type families: which block of the type space each part of the
//! protocol owns, named once.
//!
//! A role takes the frames of its family ([`MsgFamily`]) rather than a
//! range of numbers: the server's link hands an agent's task frames to the
//! task role by [`MsgFamily::Task`], the agent hands the server's file
//! frames to its file runner by [`MsgFamily::File`]. A new message type
//! goes in its family's block (the `.proto` file of each family says which
//! numbers it has taken); a type in no family is one this build does not
//! route.

use std::ops::RangeInclusive;

use crate::frame::MsgType;

/// One family of message types: the part of the protocol that owns them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsgFamily {
    /// The agent link itself: register, heartbeats, goodbye, errors
    /// (link.proto).
    Link,
    /// Tasks on the agent link (task.proto).
    Task,
    /// File transfer on the agent link (file.proto).
    File,
    /// The peer link's own frames between agents: hello, haves
    /// (file.proto; piece requests and data are [`MsgFamily::File`]
    /// types on both links).
    Peer,
    /// Plugin management on the agent link (proc.proto).
    Proc,
    /// Plugin messages on the agent link (message.proto).
    PluginMessage,
    /// The data link between an agent and a DataServer (data.proto).
    Data,
    /// Data-path frames on the agent link: the assigned DataServer
    /// (data.proto, `DataAssign`).
    DataAssign,
    /// The node link between the server nodes of a cluster (node.proto).
    Node,
    /// A proxy's link upstream, its agents' channels (proxy.proto).
    Proxy,
}

impl MsgFamily {
    /// Every family, in type order.
    pub const ALL: [MsgFamily; 10] = [
        MsgFamily::Link,
        MsgFamily::Task,
        MsgFamily::File,
        MsgFamily::Peer,
        MsgFamily::Proc,
        MsgFamily::PluginMessage,
        MsgFamily::Data,
        MsgFamily::DataAssign,
        MsgFamily::Node,
        MsgFamily::Proxy,
    ];

    /// The message types the family owns. Part of the wire contract: a
    /// block never shrinks and never moves.
    pub const fn types(self) -> RangeInclusive<u16> {
        match self {
            MsgFamily::Link => 0x0001..=0x00ff,
            MsgFamily::Task => 0x0100..=0x01ff,
            MsgFamily::File => 0x0200..=0x027f,
            MsgFamily::Peer => 0x0280..=0x02ff,
            MsgFamily::Proc => 0x0300..=0x037f,
            MsgFamily::PluginMessage => 0x0380..=0x03ff,
            MsgFamily::Data => 0x0400..=0x040f,
            MsgFamily::DataAssign => 0x0410..=0x041f,
            MsgFamily::Node => 0x0500..=0x05ff,
            MsgFamily::Proxy => 0x0600..=0x06ff,
        }
    }

    /// The family that owns message type `n`, if any.
    pub fn of(n: u16) -> Option<MsgFamily> {
        MsgFamily::ALL.into_iter().find(|f| f.types().contains(&n))
    }
}

impl MsgType {
    /// The family this type belongs to; `None` for a type in no family.
    pub fn family(self) -> Option<MsgFamily> {
        MsgFamily::of(self.to_u16())
    }

    /// Whether a frame of this type, sent to an agent, opens a stream the
    /// agent answers on (it echoes the frame's stream id): what a relay
    /// must remember to route the answers back by header alone. Other
    /// frames to an agent (cancels, peer sets, piece data, data
    /// assignments) are answered on no stream.
    pub fn opens_stream(self) -> bool {
        matches!(
            self,
            MsgType::RunScript
                | MsgType::FileManifestRequest
                | MsgType::FileStart
                | MsgType::PieceRequest
                | MsgType::ProcOperate
                | MsgType::PluginMessage
        )
    }

    /// Whether a frame of this type from an agent is the one and only
    /// answer on its stream (a relay forgets the stream after it).
    pub fn ends_stream(self) -> bool {
        matches!(
            self,
            MsgType::FileManifest
                | MsgType::PieceData
                | MsgType::ProcOperateResult
                | MsgType::PluginMessageAck
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_do_not_overlap_and_come_in_type_order() {
        for pair in MsgFamily::ALL.windows(2) {
            let (a, b) = (pair[0].types(), pair[1].types());
            assert!(a.end() < b.start(), "{:?} overlaps {:?}", pair[0], pair[1]);
        }
        assert_eq!(MsgFamily::of(0), None);
        assert_eq!(MsgFamily::of(0x0420), None);
        assert_eq!(MsgFamily::of(0xffff), None);
    }

    #[test]
    fn every_named_type_is_in_its_family() {
        use MsgFamily::*;
        let expected = [
            (MsgType::Register, Link),
            (MsgType::LinkError, Link),
            (MsgType::HandOver, Link),
            (MsgType::HandOverReady, Link),
            (MsgType::RunScript, Task),
            (MsgType::TaskStatus, Task),
            (MsgType::FileManifestRequest, File),
            (MsgType::PieceData, File),
            (MsgType::PeerHello, Peer),
            (MsgType::Have, Peer),
            (MsgType::ProcOperate, Proc),
            (MsgType::ProcAlarm, Proc),
            (MsgType::PluginMessage, PluginMessage),
            (MsgType::PluginMessageUp, PluginMessage),
            (MsgType::DataHello, Data),
            (MsgType::DataAck, Data),
            (MsgType::DataAssign, DataAssign),
        ];
        for (t, family) in expected {
            assert_eq!(t.family(), Some(family), "{t:?}");
        }
        for n in 0..=u16::MAX {
            let t = MsgType::from_u16(n);
            if !matches!(t, MsgType::Other(_)) {
                assert!(t.family().is_some(), "{t:?} ({n:#x}) is in no family");
            }
        }
    }
}
