//! What a transfer sends its agents, and what happens when an agent was
//! moving to another node (K2) as it went.
//!
//! A source is sent one `FileManifestRequest` per task, each target and
//! relay one `FileStart`. The claim each went to is recorded (`source_conn`,
//! `sent_on`): when that claim ends, what was sent on it ends with it
//! ([`super::frames`]). A hand-over seals an agent's link only once it is
//! idle; from then on until it registered on its new node, a frame for it
//! is refused as `Moving` (by this node's link at once, by the node it
//! left through the node link, or as [`AgentFrames::on_moving`] for what
//! was on its way to the sealed claim). Such a frame never reached the
//! agent, so nothing was started: the request waits in
//! [`FileService::moving`] and goes again, to the agent's new claim, in the
//! writer's next round after it registered ([`FileService::resend_moved`]).
//! One that registers nowhere within [`FOLLOW_WITHIN`] fails as offline
//! (117), as it would have at once before. An agent that reported on the
//! task (`heard`) had its frame; it does not follow.
//!
//! A `FileStart` sent again is rebuilt from the task's shared bodies and
//! the agent's current peer set; its `timeout_ms` is the one of the first
//! send (the node's deadline still ends the transfer on time).
//!
//! [`AgentFrames::on_moving`]: crate::role::link::AgentFrames::on_moving

use std::sync::Arc;
use std::time::Duration;

use gse_core::AgentKey;
use gse_proto::{Frame, MsgType};

use super::FileService;
use super::codes::ERR_AGENT_DOWN;
use super::create::fail_task;
use super::manifest::with_suffix;
use super::model::{Effect, LiveTransfer, Outcome, Phase, TransferState};
use crate::cluster::sender::{Delivery, Located, SendError};

/// How long a request waits for its moving agent to register again: the
/// node it left keeps its claim as long (the link's `MOVE_GRACE`).
pub(super) const FOLLOW_WITHIN: Duration = Duration::from_secs(30);

/// Which request of a task an agent is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Request {
    /// The source's `FileManifestRequest`.
    Manifest,
    /// A target's or relay's `FileStart`.
    Start,
}

/// A request waiting for its agent's next claim.
pub(super) struct Follow {
    t: Arc<LiveTransfer>,
    task: usize,
    agent: AgentKey,
    request: Request,
}

impl FileService {
    /// Hands `frame` (the `request` of `task` for `agent`) to the claim
    /// `at` names and records it, under the transfer's lock held by the
    /// caller (`st`): a claim that ends after this finds it. A refusal as
    /// moving follows the agent; any other failure ends what the request
    /// was for, with 117.
    pub(super) fn send_request(
        &self,
        t: &Arc<LiveTransfer>,
        (task, agent, request): (usize, AgentKey, Request),
        at: &Located,
        frame: Frame,
        st: &mut TransferState,
        effect: &mut Effect,
    ) -> bool {
        let held = at.delivery();
        let on_fail = self.on_send_failed(t, task, agent, request, held);
        match self.sender.deliver_now(at, frame, on_fail) {
            Ok(held) => {
                record(st, t, task, agent, request, held, effect);
                true
            }
            Err(SendError::Moving(_)) => {
                following(st, t, task, agent, request, effect);
                self.follow(t, task, agent, request, held);
                true
            }
            Err(why) => {
                let name = agent_name(t, task, agent, request);
                not_sent(st, t, task, agent, request, &why.for_host(&name), effect);
                false
            }
        }
    }

    /// What runs when a forward to another node fails after
    /// [`FileService::send_request`] recorded it sent under `held`.
    fn on_send_failed(
        &self,
        t: &Arc<LiveTransfer>,
        task: usize,
        agent: AgentKey,
        request: Request,
        held: Delivery,
    ) -> impl FnOnce(SendError) + Send + 'static {
        let (me, t) = (self.me.clone(), t.clone());
        move |why: SendError| {
            let Some(me) = me.upgrade() else { return };
            let follows = me.change(&t, Some("failed"), |st, effect| {
                if !unrecord(st, task, agent, request, held) {
                    return false;
                }
                if matches!(why, SendError::Moving(_)) {
                    following(st, &t, task, agent, request, effect);
                    return true;
                }
                let name = agent_name(&t, task, agent, request);
                not_sent(st, &t, task, agent, request, &why.for_host(&name), effect);
                false
            });
            if follows {
                me.follow(&t, task, agent, request, held);
            }
        }
    }

    /// Keeps `request` for `agent`, moving from its claim `moved_from`,
    /// until its next claim.
    fn follow(
        &self,
        t: &Arc<LiveTransfer>,
        task: usize,
        agent: AgentKey,
        request: Request,
        moved_from: Delivery,
    ) {
        tracing::info!(task_id = %t.id, task, agent = %agent, ?request, "the agent is moving to another node; its file request goes once it registered there");
        let follow = Follow {
            t: t.clone(),
            task,
            agent,
            request,
        };
        self.moving.wait(agent, moved_from, FOLLOW_WITHIN, follow);
    }

    /// The agent's claim `moved_from` ended by a hand-over: what was sent
    /// on it and not taken up follows the agent; the rest ends as on a
    /// disconnect.
    pub(super) fn claim_moved(&self, agent: AgentKey, moved_from: Delivery) {
        for t in self.jobs.open_jobs() {
            let follows = self.change(&t, None, |st, effect| {
                let mut follows = Vec::new();
                for task in 0..t.tasks.len() {
                    if st.runs[task].heard.contains(&agent) {
                        continue;
                    }
                    for request in [Request::Manifest, Request::Start] {
                        if unrecord(st, task, agent, request, moved_from) {
                            following(st, &t, task, agent, request, effect);
                            follows.push((task, request));
                        }
                    }
                }
                follows
            });
            for (task, request) in follows {
                self.follow(&t, task, agent, request, moved_from);
            }
        }
    }

    /// Sends the requests whose agent registered again, and ends those
    /// whose agent did not in time (called every writer round).
    pub(super) async fn resend_moved(&self) {
        if self.moving.is_empty() {
            return;
        }
        for (f, found) in self.moving.arrived(&self.sender).await {
            let Follow {
                t,
                task,
                agent,
                request,
            } = f;
            self.change(&t, Some("failed"), |st, effect| {
                if !awaits(st, &t, task, agent, request) {
                    return;
                }
                let at = match found {
                    Ok(at) => at,
                    Err(why) => {
                        let name = agent_name(&t, task, agent, request);
                        not_sent(st, &t, task, agent, request, &why.for_host(&name), effect);
                        return;
                    }
                };
                let frame = match request {
                    Request::Manifest => self.manifest_request(&t, task),
                    Request::Start => match start_frame(st, &t, task, agent) {
                        Some(frame) => frame,
                        None => return,
                    },
                };
                if self.send_request(&t, (task, agent, request), &at, frame, st, effect) {
                    tracing::info!(task_id = %t.id, task, agent = %agent, ?request, "sent the file request to the agent on its new node");
                }
            });
        }
    }
}

/// Records `request` of `task` delivered to `agent` under `held`.
fn record(
    st: &mut TransferState,
    t: &LiveTransfer,
    task: usize,
    agent: AgentKey,
    request: Request,
    held: Delivery,
    effect: &mut Effect,
) {
    let plan = &t.tasks[task];
    match request {
        Request::Manifest => {
            st.runs[task].source_conn = Some(held);
            st.set_running(plan.upload, "building the manifest".into(), effect);
        }
        Request::Start => {
            st.runs[task].sent_on.insert(agent, held);
            if t.relay_keys.contains(&agent) && !plan.by_key.contains_key(&agent) {
                st.runs[task].relays.insert(agent);
            }
            for &s in plan.by_key.get(&agent).into_iter().flatten() {
                let info = "sent the manifest; waiting for the agent's first report".to_string();
                st.set_running(plan.download(s), info, effect);
            }
        }
    }
}

/// Says on the entries `request` is for that they wait for the agent.
fn following(
    st: &mut TransferState,
    t: &LiveTransfer,
    task: usize,
    agent: AgentKey,
    request: Request,
    effect: &mut Effect,
) {
    let plan = &t.tasks[task];
    let info = format!(
        "waiting for agent {agent}, moving to another node, to register there (at most {})",
        humantime::format_duration(FOLLOW_WITHIN)
    );
    match request {
        Request::Manifest => st.set_info(plan.upload, info, effect),
        Request::Start => {
            for &s in plan.by_key.get(&agent).into_iter().flatten() {
                st.set_info(plan.download(s), info.clone(), effect);
            }
        }
    }
}

/// Forgets that `request` went to `agent` under `held`, if it is still
/// recorded so and waits for the agent (its task at that step); true if it
/// was.
fn unrecord(
    st: &mut TransferState,
    task: usize,
    agent: AgentKey,
    request: Request,
    held: Delivery,
) -> bool {
    let run = &mut st.runs[task];
    match request {
        Request::Manifest => {
            let was = run.phase == Phase::Manifest && run.source_conn == Some(held);
            if was {
                run.source_conn = None;
            }
            was
        }
        Request::Start => {
            let was = run.phase == Phase::Running && run.sent_on.get(&agent) == Some(&held);
            if was {
                run.sent_on.remove(&agent);
                run.relays.remove(&agent);
            }
            was
        }
    }
}

/// Whether `request` still waits to be sent to `agent`: its task is at
/// that step, it is not recorded sent, and (for a target) a download of
/// the agent is open.
fn awaits(
    st: &TransferState,
    t: &LiveTransfer,
    task: usize,
    agent: AgentKey,
    request: Request,
) -> bool {
    let (plan, run) = (&t.tasks[task], &st.runs[task]);
    match request {
        Request::Manifest => run.phase == Phase::Manifest && run.source_conn.is_none(),
        Request::Start => {
            run.phase == Phase::Running
                && !run.sent_on.contains_key(&agent)
                && plan.by_key.get(&agent).is_none_or(|slots| {
                    slots
                        .iter()
                        .any(|&s| !st.entries[plan.download(s) as usize].is_final())
                })
        }
    }
}

/// Ends what `request` was for: the task without its manifest, or the
/// target's downloads (a relay is left out: its zone fetches from the
/// others or direct).
fn not_sent(
    st: &mut TransferState,
    t: &LiveTransfer,
    task: usize,
    agent: AgentKey,
    request: Request,
    why: &str,
    effect: &mut Effect,
) {
    let plan = &t.tasks[task];
    match request {
        Request::Manifest => fail_task(st, plan, ERR_AGENT_DOWN, why, effect),
        Request::Start => {
            let slots = plan.by_key.get(&agent).map(Vec::as_slice).unwrap_or(&[]);
            if slots.is_empty() {
                tracing::warn!(task_id = %t.id, task, relay = %agent, reason = %why, "cannot start a zone-chain relay; its zone's targets fetch from the others or direct");
            }
            for &s in slots {
                let down = Outcome::failed(ERR_AGENT_DOWN, why.to_string());
                st.close(plan.download(s), down, effect);
            }
        }
    }
}

/// The name the caller gave the agent `request` goes to.
fn agent_name(t: &LiveTransfer, task: usize, agent: AgentKey, request: Request) -> String {
    let plan = &t.tasks[task];
    let slot = match request {
        Request::Manifest => Some(&plan.source),
        Request::Start => plan
            .by_key
            .get(&agent)
            .and_then(|s| s.first())
            .map(|&s| &plan.targets[s as usize])
            .or_else(|| {
                let mut relays = t.hops.iter().flat_map(|h| &h.relays);
                relays.find(|r| r.usable() == Some(agent))
            }),
    };
    slot.map_or_else(|| agent.to_string(), |s| s.name.clone())
}

/// The agent's `FileStart` for `task` again: the task's shared body with
/// its current peer set (and, for a target, its owner).
fn start_frame(
    st: &TransferState,
    t: &LiveTransfer,
    task: usize,
    agent: AgentKey,
) -> Option<Frame> {
    let plan = &t.tasks[task];
    let run = &st.runs[task];
    let bodies = run.start.as_ref()?;
    let peers = run.peers.get(&agent).map(Vec::as_slice).unwrap_or(&[]);
    let body = match plan.by_key.get(&agent) {
        Some(slots) => {
            let open = slots
                .iter()
                .find(|&&s| !st.entries[plan.download(s) as usize].is_final())?;
            let owner = &plan.owners[*open as usize];
            with_suffix(&bodies.target, peers, owner, &plan.target.owner)
        }
        None => with_suffix(&bodies.relay, peers, "", ""),
    };
    Some(Frame {
        msg_type: MsgType::FileStart,
        stream_id: 0,
        body,
    })
}
