use super::*;

fn key(i: u8) -> AgentKey {
    AgentKey::new(0, std::net::IpAddr::from([10, 0, 0, i]))
}

#[test]
fn balanced_or_small_differences_move_nothing() {
    assert!(plan_moves(2, &[(key(1), 0, 100_000.0), (key(2), 1, 100_000.0)]).is_empty());
    assert!(plan_moves(2, &[(key(1), 0, 1000.0), (key(2), 1, 0.0)]).is_empty());
    assert!(plan_moves(1, &[(key(1), 0, 1e9)]).is_empty());
}

#[test]
fn two_busy_agents_on_one_server_are_split() {
    let agents = [
        (key(1), 0, 200_000.0),
        (key(2), 1, 0.0),
        (key(3), 0, 200_000.0),
        (key(4), 1, 0.0),
    ];
    let moves = plan_moves(2, &agents);
    assert_eq!(moves.len(), 1, "{moves:?}");
    assert_eq!((moves[0].from, moves[0].to), (0, 1));
    assert!(moves[0].agent == key(1) || moves[0].agent == key(3));
}

#[test]
fn a_move_that_would_not_narrow_the_spread_is_not_made() {
    // One heavy agent alone: moving it only swaps the roles.
    assert!(plan_moves(2, &[(key(1), 0, 500_000.0), (key(2), 1, 0.0)]).is_empty());
    // Three servers: the heavy pair on server 2 is split to the idlest.
    let moves = plan_moves(
        3,
        &[
            (key(1), 2, 300_000.0),
            (key(2), 2, 300_000.0),
            (key(3), 0, 250_000.0),
        ],
    );
    assert_eq!(moves.len(), 1, "{moves:?}");
    assert_eq!((moves[0].from, moves[0].to), (2, 1));
}

#[test]
fn other_nodes_load_counts_and_a_remote_server_takes_one_agent_a_round() {
    // Server 0 (here) carries 4 agents of 100 kB/s; servers 1 and 2 are
    // another node's, 1 loaded by that node's agents, 2 idle.
    let agents: Vec<_> = (1..=4).map(|i| (key(i), 0, 100_000.0)).collect();
    let moves = plan_moves_over(&[0.0, 400_000.0, 0.0], &[false, true, true], &agents);
    assert_eq!(moves.len(), 1, "one onto the idle remote server: {moves:?}");
    assert_eq!((moves[0].from, moves[0].to), (0, 2));
    // Two idle remote servers: one agent each.
    let moves = plan_moves_over(&[0.0, 0.0, 0.0], &[false, true, true], &agents);
    let targets: Vec<usize> = moves.iter().map(|m| m.to).collect();
    assert_eq!(targets, vec![1, 2], "{moves:?}");
    // Other nodes' load already on the idle-looking server: nothing to do.
    assert!(plan_moves_over(&[0.0, 400_000.0], &[false, true], &agents).is_empty());
    // Without caps, the same as plan_moves.
    let two = [(key(1), 0, 200_000.0), (key(3), 0, 200_000.0)];
    assert_eq!(
        plan_moves_over(&[0.0, 0.0], &[false, false], &two),
        plan_moves(2, &two)
    );
}
