//! Identity pins.

use super::key;
use crate::seams::state_store::{IdentityPin, PinStore};

fn pin(last: u8, agent_id: &str, by_certificate: bool) -> IdentityPin {
    IdentityPin {
        key: key(206, last),
        agent_id: agent_id.into(),
        pinned_ms: 1000 + u64::from(last),
        by_certificate,
    }
}

async fn mine(store: &dyn PinStore) -> Vec<IdentityPin> {
    let all = store.list_identity_pins().await.unwrap();
    let keys: Vec<_> = all.iter().map(|p| p.key).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "pins are listed by key");
    all.into_iter()
        .filter(|p| p.key.to_string().starts_with("0:10.206."))
        .collect()
}

/// A pin binds an identity and an agent id both ways; the first claim
/// wins; re-pinning replaces both sides; a release frees both.
pub async fn pins(store: &dyn PinStore) {
    let first = pin(1, "conf-pin-a", false);
    let made = store.claim_identity(first.clone()).await.unwrap();
    assert_eq!(
        (made.pin, made.made),
        (first.clone(), true),
        "a free identity is pinned"
    );
    let again = store
        .claim_identity(pin(1, "conf-pin-a", true))
        .await
        .unwrap();
    assert_eq!(
        (again.pin, again.made),
        (first.clone(), false),
        "the older pin stays"
    );

    // Another agent id on the pinned identity: the identity's pin answers.
    let other_id = store
        .claim_identity(pin(1, "conf-pin-b", false))
        .await
        .unwrap();
    assert_eq!((other_id.pin, other_id.made), (first.clone(), false));
    // The pinned agent id on another identity: the agent id's pin answers,
    // even when that identity is free.
    let other_key = store
        .claim_identity(pin(2, "conf-pin-a", false))
        .await
        .unwrap();
    assert_eq!((other_key.pin, other_key.made), (first.clone(), false));
    assert_eq!(
        mine(store).await,
        vec![first.clone()],
        "refused claims pin nothing"
    );

    // Re-pinning moves the agent id (its old identity is freed) and replaces
    // the new identity's pin.
    let squatter = pin(3, "conf-pin-c", false);
    assert!(store.claim_identity(squatter.clone()).await.unwrap().made);
    let by_cert = pin(3, "conf-pin-a", true);
    store.repin_identity(by_cert.clone()).await.unwrap();
    assert_eq!(mine(store).await, vec![by_cert.clone()]);
    assert!(
        store
            .claim_identity(pin(1, "conf-pin-d", false))
            .await
            .unwrap()
            .made,
        "the agent id's old identity is free again"
    );
    assert!(
        store
            .claim_identity(pin(4, "conf-pin-c", false))
            .await
            .unwrap()
            .made,
        "the replaced pin's agent id is free again"
    );

    // Release returns the pin and frees both sides.
    assert_eq!(
        store.release_identity(key(206, 3)).await.unwrap(),
        Some(by_cert)
    );
    assert_eq!(store.release_identity(key(206, 3)).await.unwrap(), None);
    assert!(
        store
            .claim_identity(pin(5, "conf-pin-a", false))
            .await
            .unwrap()
            .made
    );
    assert!(
        store
            .claim_identity(pin(3, "conf-pin-e", false))
            .await
            .unwrap()
            .made
    );
    assert_eq!(
        mine(store).await,
        vec![
            pin(1, "conf-pin-d", false),
            pin(3, "conf-pin-e", false),
            pin(4, "conf-pin-c", false),
            pin(5, "conf-pin-a", false),
        ]
    );
}
