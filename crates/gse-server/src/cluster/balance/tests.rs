use super::*;

fn node(id: &str, region: &str, agents: u64) -> NodeInfo {
    NodeInfo {
        node_id: id.into(),
        region: region.into(),
        roles: vec!["link".into()],
        agent_addr: format!("{id}:28668"),
        api_addr: String::new(),
        agents,
        node_addr: String::new(),
        data_servers: Vec::new(),
    }
}

fn id(n: Option<&NodeInfo>) -> Option<&str> {
    n.map(|n| n.node_id.as_str())
}

#[test]
fn candidates_are_the_agents_region_or_everyone() {
    let mut api_only = node("d", "", 0);
    api_only.agent_addr.clear();
    let nodes = [
        node("a", "east", 0),
        node("b", "east", 0),
        node("c", "west", 0),
        api_only,
    ];
    let ids = |r: &str| -> Vec<String> {
        candidates(&nodes, r)
            .iter()
            .map(|n| n.node_id.clone())
            .collect()
    };
    assert_eq!(ids("west"), ["c"]);
    assert_eq!(ids("east"), ["a", "b"]);
    assert_eq!(
        ids(""),
        ["a", "b", "c"],
        "no agent address: takes no agents"
    );
    assert_eq!(ids("north"), ["a", "b", "c"], "no node of the region is up");
    assert_eq!(decision_region(&nodes, "north"), "");
    assert_eq!(decision_region(&nodes, "west"), "west");
}

#[test]
fn registration_is_redirected_above_share_or_the_hand_over_tolerance() {
    // 2 agents here, none elsewhere: the third goes to the least loaded.
    let nodes = [node("a", "", 2), node("b", "", 1), node("c", "", 0)];
    assert_eq!(id(redirect_target(&nodes, "a", "")), Some("c"));
    // b taking one more would be 2 above c, which hand-over would undo.
    assert_eq!(id(redirect_target(&nodes, "b", "")), Some("c"));
    assert_eq!(id(redirect_target(&nodes, "c", "")), None);
    // Balanced: nobody redirects.
    let nodes = [node("a", "", 3), node("b", "", 3), node("c", "", 3)];
    assert_eq!(id(redirect_target(&nodes, "a", "")), None);
    // A lone node takes everything.
    assert_eq!(id(redirect_target(&[node("a", "", 500)], "a", "")), None);
    // 5% slack on large counts: the share is counted with this node in it.
    let big = |mine| [node("a", "", mine), node("b", "", 1000)];
    assert_eq!(id(redirect_target(&big(1040), "a", "")), None);
    assert_eq!(id(redirect_target(&big(1200), "a", "")), Some("b"));
}

/// Agents all registering at one node, with the figures current, end
/// spread evenly and leave hand-over nothing to do.
#[test]
fn a_burst_at_one_node_is_spread_by_redirects_alone() {
    let mut nodes = vec![node("a", "", 0), node("b", "", 0), node("c", "", 0)];
    for _ in 0..30 {
        let at = match redirect_target(&nodes, "a", "") {
            Some(t) => t.node_id.clone(),
            None => "a".into(),
        };
        nodes.iter_mut().find(|n| n.node_id == at).unwrap().agents += 1;
    }
    let counts: Vec<u64> = nodes.iter().map(|n| n.agents).collect();
    assert_eq!(counts, [10, 10, 10]);
    for me in ["a", "b", "c"] {
        assert_eq!(id(hand_over_target(&nodes, me, "")), None);
    }
}

#[test]
fn only_the_most_loaded_node_hands_over() {
    let nodes = [node("a", "", 6), node("b", "", 4), node("c", "", 0)];
    assert_eq!(id(hand_over_target(&nodes, "a", "")), Some("c"));
    assert_eq!(id(hand_over_target(&nodes, "b", "")), None);
}

#[test]
fn a_regions_agent_goes_to_its_region() {
    let nodes = [
        node("a", "east", 0),
        node("b", "east", 5),
        node("c", "west", 9),
    ];
    // Even though c is the most loaded, it is west's only node.
    assert_eq!(id(redirect_target(&nodes, "a", "west")), Some("c"));
    assert_eq!(id(redirect_target(&nodes, "c", "west")), None);
    // An east agent arriving at b goes to a (b is over east's share).
    assert_eq!(id(redirect_target(&nodes, "b", "east")), Some("a"));
    assert_eq!(id(hand_over_target(&nodes, "c", "east")), Some("a"));
}

#[test]
fn hand_over_stops_within_one_agent_or_five_percent() {
    let n = |a, b| [node("a", "", a), node("b", "", b)];
    assert_eq!(id(hand_over_target(&n(9, 0), "a", "")), Some("b"));
    assert_eq!(id(hand_over_target(&n(5, 3), "a", "")), Some("b"));
    assert_eq!(id(hand_over_target(&n(5, 4), "a", "")), None);
    assert_eq!(id(hand_over_target(&n(4, 5), "a", "")), None);
    assert_eq!(id(hand_over_target(&n(1000, 960), "a", "")), None);
    assert_eq!(id(hand_over_target(&n(1000, 940), "a", "")), Some("b"));
    assert_eq!(tolerance(0), 1);
    assert_eq!(tolerance(1000), 50);
}

/// Moving one agent at a time from the most to the least loaded node, by
/// the hand-over rule, ends balanced and moves no agent twice in a row.
#[test]
fn repeated_hand_overs_converge() {
    let mut nodes = vec![node("a", "", 90), node("b", "", 10), node("c", "", 0)];
    let mut moves = 0;
    loop {
        let step = ["a", "b", "c"].iter().find_map(|me| {
            hand_over_target(&nodes, me, "").map(|t| (me.to_string(), t.node_id.clone()))
        });
        let Some((from, to)) = step else { break };
        nodes.iter_mut().find(|n| n.node_id == from).unwrap().agents -= 1;
        nodes.iter_mut().find(|n| n.node_id == to).unwrap().agents += 1;
        moves += 1;
        assert!(moves < 100, "does not converge: {nodes:?}");
    }
    let counts: Vec<u64> = nodes.iter().map(|n| n.agents).collect();
    assert!(
        counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 2,
        "{counts:?}"
    );
    assert!(moves <= 60, "{moves} moves for 60 misplaced agents");
}

#[test]
fn sent_agents_count_until_published() {
    let sent = Sent::default();
    sent.record("b");
    sent.record("b");
    let mut nodes = vec![node("a", "", 3), node("b", "", 0)];
    sent.apply(&mut nodes);
    assert_eq!(nodes[1].agents, 2);
}
