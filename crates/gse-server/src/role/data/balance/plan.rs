//! Which agents to move between DataServers, from their measured rates.

use gse_core::AgentKey;

/// Differences in load below this many bytes/s are not worth a move.
pub const MIN_SPREAD: f64 = 16.0 * 1024.0;
/// ... nor those below this share of the busier DataServer's load.
pub const MIN_SPREAD_SHARE: f64 = 0.2;

/// One planned move.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Move {
    pub agent: AgentKey,
    pub from: usize,
    pub to: usize,
    pub rate: f64,
}

/// Plans moves that narrow the spread between the most and least loaded
/// servers; `agents` are (agent, assigned server, bytes/s).
pub fn plan_moves(servers: usize, agents: &[(AgentKey, usize, f64)]) -> Vec<Move> {
    plan_moves_over(&vec![0.0; servers], &vec![false; servers], agents)
}

/// [`plan_moves`] over servers that also carry `base` bytes/s of agents
/// this node does not move (other nodes' agents, D4 across nodes). A
/// server marked in `one_move` takes at most one of these agents a round:
/// other nodes may be moving agents to it in the same round from the same
/// published figures, so each adds one, and the next round sees the sum.
pub fn plan_moves_over(
    base: &[f64],
    one_move: &[bool],
    agents: &[(AgentKey, usize, f64)],
) -> Vec<Move> {
    let servers = base.len();
    let mut load = base.to_vec();
    let mut closed = vec![false; servers];
    let mut at: Vec<(AgentKey, usize, f64)> = agents.to_vec();
    for (_, s, r) in &at {
        load[*s] += r;
    }
    let mut moves = Vec::new();
    for _ in 0..agents.len() {
        let Some((hi, lo)) = extremes(&load, &closed) else {
            break;
        };
        let spread = load[hi] - load[lo];
        if servers < 2 || spread <= MIN_SPREAD || spread <= MIN_SPREAD_SHARE * load[hi] {
            break;
        }
        let best = at
            .iter_mut()
            .filter(|(_, s, r)| *s == hi && *r > 0.0 && *r < spread)
            .min_by(|a, b| {
                let da = (a.2 - spread / 2.0).abs();
                let db = (b.2 - spread / 2.0).abs();
                da.total_cmp(&db)
            });
        let Some(agent) = best else { break };
        agent.1 = lo;
        load[hi] -= agent.2;
        load[lo] += agent.2;
        closed[lo] |= one_move[lo];
        moves.push(Move {
            agent: agent.0,
            from: hi,
            to: lo,
            rate: agent.2,
        });
    }
    moves
}

/// Indexes of the most loaded server and of the least loaded one still
/// taking agents (lowest index on ties); `None` when none takes any.
fn extremes(load: &[f64], closed: &[bool]) -> Option<(usize, usize)> {
    let mut hi = 0;
    let mut lo: Option<usize> = None;
    for (i, l) in load.iter().enumerate() {
        if *l > load[hi] {
            hi = i;
        }
        if !closed[i] && lo.is_none_or(|lo| *l < load[lo]) {
            lo = Some(i);
        }
    }
    lo.map(|lo| (hi, lo))
}
