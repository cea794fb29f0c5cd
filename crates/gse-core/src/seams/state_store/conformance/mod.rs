//! One contract for every state store: call [`all`] on a fresh store (the
//! embedded store and the Redis store both run it in their tests). Each
//! concern has its own functions, taking only that concern's trait, so a
//! store that grows a concern can be checked on it alone. Every function
//! uses its own agents, task ids and route ids, so they can run one after
//! another on one store. Panics name the broken rule.

mod agents;
mod lost;
mod pins;
mod routes;
mod tasks;
mod transfers;

pub use agents::{agents, apps};
pub use lost::lost_alarms;
pub use pins::pins;
pub use routes::routes;
pub use tasks::tasks;
pub use transfers::transfers;

use super::StateStore;
use crate::AgentKey;

/// Every rule of every concern, on a fresh store.
pub async fn all(store: &dyn StateStore) {
    agents(store).await;
    apps(store).await;
    tasks(store).await;
    transfers(store).await;
    routes(store).await;
    pins(store).await;
    lost_alarms(store).await;
}

/// Agent `10.<net>.0.<last>` in cloud 0; each concern uses its own `net`.
fn key(net: u8, last: u8) -> AgentKey {
    AgentKey::new(0, std::net::IpAddr::from([10, net, 0, last]))
}
