//! The plugin-message codec, and the socket over real connections.

use futures::{SinkExt, StreamExt};
use tokio_util::codec::Framed;

use super::*;

fn encode(f: MessageFrame) -> BytesMut {
    let mut b = BytesMut::new();
    MessageCodec::new(1024).encode(f, &mut b).unwrap();
    b
}

#[test]
fn header_layout_is_big_endian_and_length_counts_the_header() {
    let b = encode(MessageFrame::new(
        KEEPALIVE_RESP,
        0x0102,
        Bytes::from_static(b"{}"),
    ));
    assert_eq!(&b[0..4], &[0xDE, 0xAD, 0xBE, 0xEF]);
    assert_eq!(&b[4..6], &[0x90, 0x07]);
    assert_eq!(&b[6..8], &[0, 6]);
    assert_eq!(&b[8..16], &[0, 0, 0, 0, 0, 0, 1, 2]);
    assert_eq!(&b[16..20], &30u32.to_be_bytes());
    assert_eq!(b.len(), 30);
}

#[test]
fn round_trip_and_partial_input() {
    let frame = MessageFrame::new(KEEPALIVE_REQ, 9, Bytes::from_static(b"{\"pid\":1}"));
    let full = encode(frame.clone());
    let mut codec = MessageCodec::new(1024);
    for cut in [0, 3, 4, 27, 28, full.len() - 1] {
        let mut part = BytesMut::from(&full[..cut]);
        assert!(codec.decode(&mut part).unwrap().is_none(), "cut {cut}");
    }
    let mut all = full.clone();
    assert_eq!(codec.decode(&mut all).unwrap(), Some(frame));
    assert!(all.is_empty());
}

#[test]
fn bad_magic_short_and_oversized_frames_are_errors() {
    let mut codec = MessageCodec::new(64);
    let mut b = encode(MessageFrame::new(KEEPALIVE_REQ, 1, Bytes::new()));
    b[0] = 0;
    assert!(matches!(
        codec.decode(&mut b),
        Err(MessageError::BadMagic(_))
    ));
    // Refused as soon as four bytes show the wrong magic.
    let mut b = BytesMut::from(&b"GET / HTTP/1.1"[..4]);
    assert!(matches!(
        codec.decode(&mut b),
        Err(MessageError::BadMagic(_))
    ));
    let mut b = encode(MessageFrame::new(KEEPALIVE_REQ, 1, Bytes::new()));
    b[16..20].copy_from_slice(&10u32.to_be_bytes());
    assert!(matches!(
        codec.decode(&mut b),
        Err(MessageError::TooShort(10))
    ));
    let mut b = encode(MessageFrame::new(
        KEEPALIVE_REQ,
        1,
        Bytes::from(vec![b'x'; 100]),
    ));
    assert!(matches!(
        codec.decode(&mut b),
        Err(MessageError::TooLarge { len: 128, max: 64 })
    ));
}

#[tokio::test]
async fn keepalive_is_answered_and_a_bad_client_does_not_hurt_others() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipc.state.message");
    let server = MessageServer::bind(&path, KeepaliveAnswer::running("agent-1", 3), 4096).unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone()));

    let mut bad = UnixStream::connect(&path).await.unwrap();
    bad.write_all(b"hello, this is not a frame at all")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let n = bad.read_to_end(&mut sink).await.unwrap();
    assert_eq!(n, 0, "the server closes a bad connection");

    let mut good = Framed::new(
        UnixStream::connect(&path).await.unwrap(),
        MessageCodec::new(4096),
    );
    let body = br#"{"plugin_name":"beat","version":"1","pid":1,"status_code":0,"status":"ok","remark":""}"#;
    good.send(MessageFrame::new(
        KEEPALIVE_REQ,
        77,
        Bytes::from_static(body),
    ))
    .await
    .unwrap();
    let reply = good.next().await.unwrap().unwrap();
    assert_eq!(reply.header.proto_type, KEEPALIVE_RESP);
    assert_eq!(reply.header.sequence, 77);
    let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(v["agent_id"], "agent-1");
    assert_eq!(v["cloud_id"], 3);
    assert_eq!(v["run_mode"], 1);
    assert_eq!(v["status_code"], 2);
    stop.cancel();
}

/// A keepalive round trip on `conn`, or `None` if nothing came back
/// within `wait`.
async fn keepalive(
    conn: &mut Framed<UnixStream, MessageCodec>,
    wait: std::time::Duration,
) -> Option<MessageFrame> {
    conn.send(MessageFrame::new(
        KEEPALIVE_REQ,
        1,
        Bytes::from_static(b"{}"),
    ))
    .await
    .ok()?;
    tokio::time::timeout(wait, conn.next())
        .await
        .ok()
        .flatten()
        .and_then(Result::ok)
}

#[tokio::test]
async fn connections_are_bounded_and_idle_ones_are_closed() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipc.state.message");
    let server = MessageServer::bind(&path, KeepaliveAnswer::running("a", 0), 4096)
        .unwrap()
        .with_max_connections(2)
        .with_idle_timeout(std::time::Duration::from_millis(600));
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone()));
    let connect = || async {
        Framed::new(
            UnixStream::connect(&path).await.unwrap(),
            MessageCodec::new(4096),
        )
    };
    let short = std::time::Duration::from_millis(300);

    // Two slots: both served; a third waits for a slot.
    let mut a = connect().await;
    let mut b = connect().await;
    assert!(keepalive(&mut a, short).await.is_some());
    assert!(keepalive(&mut b, short).await.is_some());
    let mut c = connect().await;
    assert!(
        keepalive(&mut c, short).await.is_none(),
        "a third connection is served beyond max_connections"
    );
    // One closing frees its slot for the waiting one.
    drop(a);
    let reply = tokio::time::timeout(std::time::Duration::from_secs(2), c.next())
        .await
        .expect("the waiting connection is served once a slot is free");
    assert!(reply.is_some());

    // A connection that sends nothing is closed after the idle timeout
    // (an open one would never end this read).
    let mut idle = UnixStream::connect(&path).await.unwrap();
    drop(b);
    let mut sink = Vec::new();
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        idle.read_to_end(&mut sink),
    )
    .await
    .expect("an idle connection is closed")
    .unwrap();
    assert_eq!(n, 0);
    stop.cancel();
}

#[test]
fn pipelined_keepalives_buffer_a_bounded_answer_at_a_time() {
    let conn = Connection {
        answer: Arc::new(Bytes::from(
            serde_json::to_vec(&KeepaliveAnswer::running("a".repeat(32).as_str(), 0)).unwrap(),
        )),
        max: 1024,
        idle_timeout: IDLE_TIMEOUT,
        hub: Arc::new(MessageHub::default()),
        id: 1,
        may_speak: true,
    };
    let mut speaking = Speaking::default();
    // What one 64 KiB read holds: ~2,300 keepalives of 28 bytes.
    const SENT: usize = 65536 / HEADER_LEN;
    let mut buf = BytesMut::new();
    for seq in 0..SENT {
        buf.extend_from_slice(&encode(MessageFrame::new(
            KEEPALIVE_REQ,
            seq as u64,
            Bytes::new(),
        )));
    }
    let mut codec = MessageCodec::new(1024);
    let reply_len = encode(MessageFrame::new(KEEPALIVE_RESP, 0, (*conn.answer).clone())).len();
    let (mut out, mut answered, mut rounds) = (BytesMut::new(), 0, 0);
    loop {
        let frames = conn
            .answer_some(&mut codec, &mut buf, &mut out, &mut speaking)
            .unwrap();
        if frames == 0 {
            break;
        }
        assert!(
            out.len() < MAX_PENDING_REPLIES + reply_len,
            "{} reply bytes buffered",
            out.len()
        );
        // The replies are written (the pump does so) before decoding more.
        answered += out.len() / reply_len;
        out.clear();
        rounds += 1;
    }
    assert_eq!(answered, SENT, "every keepalive answered, in rounds");
    assert!(rounds > 1 && buf.is_empty());
}

/// A plugin-message socket served with `speakers`, its hub's way to the
/// link, and an SDK-like client that said its keepalive as `plugin`.
async fn plugin_session(
    dir: &std::path::Path,
    speakers: Speakers,
    plugin: &str,
) -> (
    Arc<MessageHub>,
    tokio::sync::mpsc::Receiver<gse_proto::Frame>,
    Framed<UnixStream, MessageCodec>,
    CancellationToken,
) {
    let path = dir.join("ipc.state.message");
    let hub = Arc::new(MessageHub::new(speakers));
    let server = MessageServer::bind(&path, KeepaliveAnswer::running("agent-1", 0), 1 << 20)
        .unwrap()
        .with_hub(hub.clone());
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone()));
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    hub.attach(tx);
    let mut client = Framed::new(
        UnixStream::connect(&path).await.unwrap(),
        MessageCodec::new(1 << 20),
    );
    let body = format!(
        r#"{{"plugin_name":"{plugin}","version":"1","pid":1,"status_code":0,"status":"ok","remark":""}}"#
    );
    client
        .send(MessageFrame::new(KEEPALIVE_REQ, 1, Bytes::from(body)))
        .await
        .unwrap();
    let reply = client.next().await.unwrap().unwrap();
    assert_eq!(reply.header.proto_type, KEEPALIVE_RESP, "authorised");
    (hub, rx, client, stop)
}

fn plugin_message(plugin: &str, stream: u64) -> gse_proto::Frame {
    gse_proto::Frame::new(
        gse_proto::MsgType::PluginMessage,
        stream,
        &gse_proto::link::PluginMessage {
            plugin: plugin.into(),
            message_id: "bkmonitorbeat.fetch/host/dataid.ab.1".into(),
            content: br#"{"code":0,"data":[{"task":"t","dataid":1001}]}"#.to_vec(),
        },
    )
}

/// A 0x900a as the SDK builds it: the info JSON, then the content.
fn respond(name: &str, message_id: &str, content: &[u8]) -> MessageFrame {
    let info = format!(
        r#"{{"name":"{name}","transmit_type":0,"topic":"","message_id":"{message_id}","session_id":""}}"#
    );
    let mut body = BytesMut::from(info.as_bytes());
    body.extend_from_slice(content);
    let mut f = MessageFrame::new(RESPOND_MESSAGE, 9, body.freeze());
    f.header.reserved0 = info.len() as u32;
    f.header.reserved1 = content.len() as u32;
    f
}

#[tokio::test]
async fn the_servers_message_reaches_the_plugin_and_the_plugins_goes_up() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, mut up, mut client, stop) =
        plugin_session(dir.path(), Speakers::default_only(), "bkmonitorbeat").await;
    assert_eq!(hub.listening(), ["bkmonitorbeat"]);

    // Down: written to the plugin as a 0x9008, answered on the stream.
    assert!(hub.handle(&plugin_message("bkmonitorbeat", 5)));
    let ack = up.recv().await.unwrap();
    assert_eq!(ack.msg_type, gse_proto::MsgType::PluginMessageAck);
    assert_eq!(ack.stream_id, 5);
    let ack: gse_proto::link::PluginMessageAck = ack.decode().unwrap();
    assert_eq!((ack.code, ack.connections), (0, 1), "{ack:?}");
    let got = client.next().await.unwrap().unwrap();
    assert_eq!(got.header.proto_type, DISPATCH_MESSAGE);
    let (info_len, content_len) = (got.header.reserved0 as usize, got.header.reserved1 as usize);
    assert!(info_len > 0);
    assert_eq!(info_len + content_len, got.body.len(), "the SDK's check");
    assert_eq!(got.header.length as usize, HEADER_LEN + got.body.len());
    let info: serde_json::Value = serde_json::from_slice(&got.body[..info_len]).unwrap();
    assert_eq!(info["message_id"], "bkmonitorbeat.fetch/host/dataid.ab.1");
    assert_eq!(info["session_id"], "");
    assert_eq!(
        &got.body[info_len..],
        br#"{"code":0,"data":[{"task":"t","dataid":1001}]}"#
    );

    // Up: its 0x900a goes to the server as a PluginMessageUp.
    let content = br#"{"type":"fetch/host/dataid","params":{"tasks":["t"]}}"#;
    client
        .send(respond("bkmonitorbeat", "m-2", content))
        .await
        .unwrap();
    let frame = up.recv().await.unwrap();
    assert_eq!(frame.msg_type, gse_proto::MsgType::PluginMessageUp);
    let m: gse_proto::link::PluginMessageUp = frame.decode().unwrap();
    assert_eq!(
        (
            m.plugin.as_str(),
            m.message_id.as_str(),
            m.content.as_slice()
        ),
        ("bkmonitorbeat", "m-2", &content[..])
    );

    // A message for a plugin nobody speaks for.
    hub.handle(&plugin_message("other", 6));
    let ack: gse_proto::link::PluginMessageAck = up.recv().await.unwrap().decode().unwrap();
    assert_eq!(ack.code, gse_proto::plugin_message::NOT_CONNECTED);
    assert!(
        ack.message.contains("\"other\" is not connected"),
        "{ack:?}"
    );

    // A 0x900a whose part lengths do not add up is dropped: the next one
    // is the next to go up.
    let mut bad = respond("bkmonitorbeat", "m-3", b"xyz");
    bad.header.reserved1 = 99;
    client.send(bad).await.unwrap();
    client
        .send(respond("bkmonitorbeat", "m-4", b"{}"))
        .await
        .unwrap();
    let m: gse_proto::link::PluginMessageUp = up.recv().await.unwrap().decode().unwrap();
    assert_eq!(m.message_id, "m-4");
    drop(client);
    for _ in 0..500 {
        if hub.listening().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        hub.listening().is_empty(),
        "a closed connection is forgotten"
    );
    stop.cancel();
}

#[tokio::test]
async fn a_user_that_may_not_speak_for_plugins_gets_no_message_and_sends_none() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, mut up, mut client, stop) =
        plugin_session(dir.path(), Speakers::nobody(), "bkmonitorbeat").await;
    assert!(hub.listening().is_empty(), "not listed as the plugin");
    hub.handle(&plugin_message("bkmonitorbeat", 5));
    let ack: gse_proto::link::PluginMessageAck = up.recv().await.unwrap().decode().unwrap();
    assert_eq!(ack.code, gse_proto::plugin_message::NOT_CONNECTED);
    client
        .send(respond("bkmonitorbeat", "m-1", b"{}"))
        .await
        .unwrap();
    // Keepalives still work; nothing went up.
    assert!(
        keepalive(&mut client, std::time::Duration::from_secs(5))
            .await
            .is_some()
    );
    assert!(up.try_recv().is_err());
    stop.cancel();
}
