//! Peer sets for same-zone transfers, zone chains of one and two hops,
//! pass-throughs, isolated targets and the set limit.

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;

fn member(agent: &str, zone: &str) -> Member {
    let ip = agent.split_once(':').map_or(agent, |(_, ip)| ip);
    Member {
        agent: agent.into(),
        zone: zone.into(),
        addr: Some(format!("{ip}:20020").parse().unwrap()),
        area: agent
            .split_once(':')
            .and_then(|(area, _)| area.parse().ok())
            .unwrap_or(0),
    }
}

fn agents(peers: &[Peer]) -> Vec<&str> {
    peers.iter().map(|p| p.agent.as_str()).collect()
}

fn sorted(peers: &[Peer]) -> Vec<&str> {
    let mut v = agents(peers);
    v.sort_unstable();
    v
}

fn run(
    source: &Member,
    targets: &[Member],
    hops: &[Hop],
    pass: &[ZonePair],
    limit: usize,
) -> PeerPlan {
    let targets: Vec<Option<Member>> = targets.iter().cloned().map(Some).collect();
    let top = Topology {
        source,
        targets: &targets,
        hops,
        pass_through: pass,
    };
    plan(&top, limit, &mut StdRng::seed_from_u64(7))
}

fn peers_of(plan: &PeerPlan, target: usize) -> &[Peer] {
    plan.targets[target].as_ref().unwrap().as_ref().unwrap()
}

fn hop(zone: &str, relays: &[&str]) -> Hop {
    Hop {
        zone: zone.into(),
        relays: relays.iter().map(|r| Some(member(r, zone))).collect(),
    }
}

#[test]
fn same_zone_targets_peer_with_the_source_and_each_other() {
    let src = member("0:10.0.0.1", "a");
    let targets = [
        member("0:10.0.0.2", "a"),
        member("0:10.0.0.3", "a"),
        member("0:10.0.0.4", "a"),
    ];
    let plan = run(&src, &targets, &[], &[], 32);
    let peers = peers_of(&plan, 0);
    assert_eq!(peers[0].agent, "0:10.0.0.1");
    assert!(peers[0].is_source);
    assert_eq!(peers[0].addr, "10.0.0.1:20020");
    assert_eq!(sorted(peers), ["0:10.0.0.1", "0:10.0.0.3", "0:10.0.0.4"]);
    assert!(peers[1..].iter().all(|p| !p.is_source));
}

#[test]
fn agents_without_a_p2p_listener_are_no_peers() {
    let mut src = member("0:10.0.0.1", "");
    src.addr = None;
    let mut quiet = member("0:10.0.0.3", "");
    quiet.addr = None;
    let targets = [member("0:10.0.0.2", ""), quiet];
    let plan = run(&src, &targets, &[], &[], 32);
    assert!(peers_of(&plan, 0).is_empty());
    assert_eq!(agents(peers_of(&plan, 1)), ["0:10.0.0.2"]);
}

#[test]
fn a_target_on_the_source_host_still_has_the_source() {
    let src = member("0:10.0.0.1", "");
    let plan = run(&src, &[member("0:10.0.0.1", "")], &[], &[], 32);
    assert_eq!(agents(peers_of(&plan, 0)), ["0:10.0.0.1"]);
}

#[test]
fn f8_one_hop_crosses_the_boundary_once() {
    let src = member("0:10.0.0.1", "a");
    let targets = [
        member("0:10.0.0.2", "a"),
        member("0:10.1.0.2", "b"),
        member("0:10.1.0.3", "b"),
    ];
    let hops = [hop("b", &["0:10.1.0.1"])];
    let plan = run(&src, &targets, &hops, &[], 32);
    // The zone-a target never sees the relay; zone-b targets never see the source.
    assert_eq!(sorted(peers_of(&plan, 0)), ["0:10.0.0.1"]);
    assert_eq!(agents(peers_of(&plan, 1)), ["0:10.1.0.1", "0:10.1.0.3"]);
    assert_eq!(agents(peers_of(&plan, 2)), ["0:10.1.0.1", "0:10.1.0.2"]);
    let relay = plan.relays[0][0].as_ref().unwrap();
    assert!(relay[0].is_source);
    assert_eq!(sorted(relay), ["0:10.0.0.1", "0:10.0.0.2"]);
}

#[test]
fn f8_two_hops_chain_relays_to_relays() {
    let src = member("0:10.0.0.1", "a");
    let targets = [
        member("0:10.1.0.2", "b"),
        member("0:10.2.0.2", "c"),
        member("0:10.2.0.3", "c"),
    ];
    let hops = [
        hop("b", &["0:10.1.0.1", "0:10.1.0.9"]),
        hop("c", &["0:10.2.0.1"]),
    ];
    let plan = run(&src, &targets, &hops, &[], 32);
    let b_relay = plan.relays[0][0].as_ref().unwrap();
    assert_eq!(sorted(b_relay), ["0:10.0.0.1", "0:10.1.0.9"]);
    let c_relay = plan.relays[1][0].as_ref().unwrap();
    assert_eq!(sorted(c_relay), ["0:10.1.0.1", "0:10.1.0.2", "0:10.1.0.9"]);
    assert!(c_relay.iter().all(|p| !p.is_source));
    assert_eq!(sorted(peers_of(&plan, 1)), ["0:10.2.0.1", "0:10.2.0.3"]);
    assert_eq!(
        peers_of(&plan, 1)[0].agent,
        "0:10.2.0.1",
        "relays come first"
    );
    assert_eq!(sorted(peers_of(&plan, 0)), ["0:10.1.0.1", "0:10.1.0.9"]);
}

#[test]
fn f9_pass_through_adds_the_other_zones_holders() {
    let src = member("0:10.0.0.1", "a");
    let targets = [
        member("0:10.0.0.2", "a"),
        member("0:10.1.0.2", "b"),
        member("0:10.1.0.3", "b"),
    ];
    let pass = [ZonePair {
        from_zone: "a".into(),
        to_zone: "b".into(),
    }];
    let plan = run(&src, &targets, &[], &pass, 32);
    let peers = peers_of(&plan, 1);
    assert!(peers[0].is_source);
    assert_eq!(sorted(peers), ["0:10.0.0.1", "0:10.0.0.2", "0:10.1.0.3"]);
    // The other direction is not opened: zone a's target is unchanged.
    assert_eq!(sorted(peers_of(&plan, 0)), ["0:10.0.0.1"]);
}

#[test]
fn isolated_targets_get_a_707_message_that_says_what_to_do() {
    let src = member("0:10.0.0.1", "a");
    let targets = [member("0:127.0.0.3", "b"), member("0:10.0.0.2", "a")];
    // A pass-through from a zone the content never reaches opens nothing.
    let pass = [ZonePair {
        from_zone: "x".into(),
        to_zone: "b".into(),
    }];
    let plan = run(&src, &targets, &[], &pass, 32);
    let err = plan.targets[0].as_ref().unwrap().as_ref().unwrap_err();
    assert_eq!(
        err,
        "target 0:127.0.0.3 is in zone \"b\", isolated from the source's zone \"a\": name a zone_chain relay for zone \"b\" or ask the operator for a [[file.pass_through]] from \"a\" to \"b\""
    );
    assert!(plan.targets[1].as_ref().unwrap().is_ok());
}

#[test]
fn pass_throughs_chain_from_reached_zones() {
    let src = member("0:10.0.0.1", "a");
    let targets = [member("0:10.1.0.2", "b"), member("0:10.2.0.2", "c")];
    let pass = [
        ZonePair {
            from_zone: "b".into(),
            to_zone: "c".into(),
        },
        ZonePair {
            from_zone: "a".into(),
            to_zone: "b".into(),
        },
    ];
    let plan = run(&src, &targets, &[], &pass, 32);
    assert_eq!(agents(peers_of(&plan, 1)), ["0:10.1.0.2"]);
}

#[test]
fn c4_sets_are_capped_source_first_and_spread_over_the_zone() {
    let src = member("0:10.0.0.1", "");
    let targets: Vec<Member> = (2..202)
        .map(|i| member(&format!("0:10.0.{}.{}", i / 256, i % 256), ""))
        .collect();
    let plan = run(&src, &targets, &[], &[], 5);
    let mut used = HashSet::new();
    for (i, t) in targets.iter().enumerate() {
        let peers = peers_of(&plan, i);
        assert_eq!(peers.len(), 5);
        assert!(peers[0].is_source);
        assert!(peers.iter().all(|p| p.agent != t.agent), "never itself");
        let distinct: HashSet<_> = peers.iter().map(|p| &p.agent).collect();
        assert_eq!(distinct.len(), 5);
        used.extend(peers[1..].iter().map(|p| p.agent.clone()));
    }
    assert!(
        used.len() > 150,
        "random samples spread the load: {} peers used",
        used.len()
    );
}

#[test]
fn unavailable_targets_and_relays_are_skipped() {
    let src = member("0:10.0.0.1", "a");
    let targets = vec![None, Some(member("0:10.1.0.2", "b"))];
    let hops = [Hop {
        zone: "b".into(),
        relays: vec![None, Some(member("0:10.1.0.1", "b"))],
    }];
    let top = Topology {
        source: &src,
        targets: &targets,
        hops: &hops,
        pass_through: &[],
    };
    let plan = plan(&top, 32, &mut StdRng::seed_from_u64(1));
    assert!(plan.targets[0].is_none());
    assert!(plan.relays[0][0].is_none());
    assert_eq!(agents(peers_of(&plan, 1)), ["0:10.1.0.1"]);
}

/// Issue 12: agents of another cloud area than the source's reach neither
/// it nor the servers' network; they peer with their own area's targets
/// only (their proxy serves them the rest), and the source's area never
/// gets them as peers. A zone of theirs no rule reaches is no 707.
#[test]
fn f8_an_areas_targets_peer_inside_their_area_only() {
    let source = member("0:10.0.0.1", "");
    let targets = [
        member("0:10.0.0.2", ""),
        member("7:10.7.0.2", ""),
        member("7:10.7.0.3", ""),
        member("7:10.7.0.4", "rack-b"),
        member("8:10.8.0.2", ""),
    ];
    let plan = run(&source, &targets, &[], &[], 10);
    assert_eq!(sorted(peers_of(&plan, 0)), ["0:10.0.0.1"]);
    assert_eq!(sorted(peers_of(&plan, 1)), ["7:10.7.0.3"]);
    assert_eq!(sorted(peers_of(&plan, 2)), ["7:10.7.0.2"]);
    assert!(peers_of(&plan, 3).is_empty(), "a zone of its own: none");
    assert!(peers_of(&plan, 4).is_empty(), "another area: none");
}
