//! Data routes.

use crate::seams::state_store::{ChannelRecord, NewId, RouteStore, StreamToRecord};

fn stream_to(spec: &str) -> StreamToRecord {
    StreamToRecord {
        stream_to_id: 0,
        plat_name: "bkmonitor".into(),
        spec: spec.into(),
    }
}

fn channel(spec: &str) -> ChannelRecord {
    ChannelRecord {
        channel_id: 0,
        plat_name: "bkmonitor".into(),
        spec: spec.into(),
    }
}

/// Ids are picked by the store; stream_tos and channels are separate;
/// records replace and delete by id; lists are by id.
pub async fn routes(store: &dyn RouteStore) {
    let next = NewId::Next {
        first: 5500,
        last: 5502,
    };
    let ins = |id| store.insert_stream_to(stream_to("{}"), id);
    assert_eq!(
        ins(next).await.unwrap(),
        Some(5500),
        "a free range starts at first"
    );
    assert_eq!(ins(next).await.unwrap(), Some(5501));
    assert_eq!(
        ins(NewId::Given(5507)).await.unwrap(),
        Some(5507),
        "outside the range"
    );
    assert_eq!(
        ins(next).await.unwrap(),
        Some(5502),
        "which does not move it"
    );
    assert_eq!(ins(next).await.unwrap(), None, "range full");
    assert_eq!(ins(NewId::Given(5507)).await.unwrap(), None, "taken");

    // Once the range's last id is taken, the lowest free one.
    let wide = NewId::Next {
        first: 6100,
        last: 6_000_000,
    };
    let add = |id| store.insert_channel(channel("{\"v\":1}"), id);
    assert_eq!(add(NewId::Given(6_000_000)).await.unwrap(), Some(6_000_000));
    assert_eq!(add(wide).await.unwrap(), Some(6100));
    assert_eq!(add(NewId::Given(6102)).await.unwrap(), Some(6102));
    assert_eq!(add(wide).await.unwrap(), Some(6101));
    assert_eq!(add(wide).await.unwrap(), Some(6103));

    // The two kinds do not share ids.
    assert_eq!(add(NewId::Given(5500)).await.unwrap(), Some(5500));

    // Replace and delete by id.
    let mut changed = channel("{\"v\":2}");
    changed.channel_id = 6100;
    assert!(store.replace_channel(changed.clone()).await.unwrap());
    let mut missing = channel("{}");
    missing.channel_id = 6199;
    assert!(
        !store.replace_channel(missing).await.unwrap(),
        "nothing to replace"
    );
    let mut st = stream_to("{\"w\":1}");
    st.stream_to_id = 5501;
    assert!(store.replace_stream_to(st.clone()).await.unwrap());
    assert!(store.delete_stream_to(5500).await.unwrap());
    assert!(!store.delete_stream_to(5500).await.unwrap(), "already gone");
    assert!(store.delete_channel(6102).await.unwrap());
    assert!(!store.delete_channel(6102).await.unwrap());

    let streams = store.list_stream_tos().await.unwrap();
    let ids: Vec<u32> = streams.iter().map(|s| s.stream_to_id).collect();
    assert_eq!(ids, vec![5501, 5502, 5507], "by id");
    assert_eq!(streams[0], st, "the replacement is stored whole");
    let channels = store.list_channels().await.unwrap();
    let ids: Vec<u32> = channels.iter().map(|c| c.channel_id).collect();
    assert_eq!(ids, vec![5500, 6100, 6101, 6103, 6_000_000]);
    assert_eq!(channels[1], changed);
}
