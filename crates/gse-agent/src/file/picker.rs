//! Which piece to ask a peer for next: rarest first (F1).
//!
//! [`Availability`] counts, per piece, how many known peers have it; it is
//! updated as peers announce bitmaps or single pieces. [`pick_rarest`]
//! then chooses, among the pieces a given peer has, we lack and nobody is
//! already fetching, one held by the fewest peers, breaking ties at random
//! so that targets starting together spread over different pieces;
//! [`pick_rarest_in`] does so among the first few candidates only. Pure:
//! no I/O, no clock; the RNG is passed in (seeded in tests). Peer lists,
//! request slots and timeouts live with the protocol.

use rand::Rng;

use super::piece_set::PieceSet;

/// How many known peers have each piece.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Availability {
    counts: Vec<u32>,
}

// === impl Availability ===

impl Availability {
    /// No peers known yet, for a file of `pieces` pieces.
    pub fn new(pieces: u32) -> Self {
        Availability {
            counts: vec![0; pieces as usize],
        }
    }

    /// The number of pieces tracked.
    pub fn len(&self) -> u32 {
        self.counts.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// A peer joined (or re-announced after [`Availability::remove_peer`])
    /// with bitmap `have`.
    pub fn add_peer(&mut self, have: &PieceSet) {
        for index in have.iter() {
            if let Some(count) = self.counts.get_mut(index as usize) {
                *count += 1;
            }
        }
    }

    /// A peer with bitmap `have` left (or is about to re-announce).
    pub fn remove_peer(&mut self, have: &PieceSet) {
        for index in have.iter() {
            if let Some(count) = self.counts.get_mut(index as usize) {
                *count = count.saturating_sub(1);
            }
        }
    }

    /// A known peer announced that it now has piece `index` (only call this
    /// when its bitmap did not have it before).
    pub fn peer_got(&mut self, index: u32) {
        if let Some(count) = self.counts.get_mut(index as usize) {
            *count += 1;
        }
    }

    /// A known peer turned out not to have piece `index` after all (it
    /// answered "missing"); only call this when its bitmap had it.
    pub fn peer_lost(&mut self, index: u32) {
        if let Some(count) = self.counts.get_mut(index as usize) {
            *count = count.saturating_sub(1);
        }
    }

    /// How many known peers have piece `index`.
    pub fn count(&self, index: u32) -> u32 {
        self.counts.get(index as usize).copied().unwrap_or(0)
    }
}

/// Which candidates [`pick_rarest_in`] looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Pieces below this index are not looked at (we have them all).
    pub from: u32,
    /// Only the first `len` candidates, in index order, are compared.
    pub len: usize,
    /// Only pieces held by at most this many known peers (`Some(0)`: only
    /// pieces nobody else has, for asking the source).
    pub max_count: Option<u32>,
}

impl Window {
    /// Every candidate.
    pub const ALL: Window = Window {
        from: 0,
        len: usize::MAX,
        max_count: None,
    };
}

/// The next piece to request from a peer whose bitmap is `peer`, or `None`
/// when it has nothing we need that is not already in flight.
///
/// Candidates: in `peer`, not in `ours`, not in `in_flight`. Among them,
/// one with the lowest count in `availability`; ties are broken uniformly
/// at random (reservoir sampling, one pass, no allocation).
pub fn pick_rarest<R: Rng + ?Sized>(
    ours: &PieceSet,
    peer: &PieceSet,
    in_flight: &PieceSet,
    availability: &Availability,
    rng: &mut R,
) -> Option<u32> {
    pick_rarest_in(ours, peer, in_flight, availability, Window::ALL, rng)
}

/// [`pick_rarest`] among the candidates `window` lets through. A window
/// of the first few candidates makes a file arrive roughly in order (so it
/// can be checked as it arrives) while staying rarest-first within it.
pub fn pick_rarest_in<R: Rng + ?Sized>(
    ours: &PieceSet,
    peer: &PieceSet,
    in_flight: &PieceSet,
    availability: &Availability,
    window: Window,
    rng: &mut R,
) -> Option<u32> {
    let mut best: Option<(u32, u32)> = None; // (count, index)
    let mut ties = 0u32;
    let candidates = (window.from..peer.len())
        .filter(|&i| peer.contains(i) && !ours.contains(i) && !in_flight.contains(i))
        .filter(|&i| window.max_count.is_none_or(|m| availability.count(i) <= m))
        .take(window.len);
    for index in candidates {
        let count = availability.count(index);
        match best {
            Some((best_count, _)) if count > best_count => {}
            Some((best_count, _)) if count == best_count => {
                ties += 1;
                if rng.random_range(0..ties) == 0 {
                    best = Some((count, index));
                }
            }
            _ => {
                best = Some((count, index));
                ties = 1;
            }
        }
    }
    best.map(|(_, index)| index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn set(len: u32, pieces: &[u32]) -> PieceSet {
        let mut s = PieceSet::new(len);
        for &p in pieces {
            s.insert(p);
        }
        s
    }

    fn availability(len: u32, peers: &[&PieceSet]) -> Availability {
        let mut a = Availability::new(len);
        for p in peers {
            a.add_peer(p);
        }
        a
    }

    #[test]
    fn f1_picks_the_rarest_piece_the_peer_has() {
        let a = set(6, &[0, 1, 2, 3]);
        let b = set(6, &[0, 1, 2]);
        let c = set(6, &[0, 1]);
        let avail = availability(6, &[&a, &b, &c]);
        let mut rng = StdRng::seed_from_u64(1);
        let none = PieceSet::new(6);
        assert_eq!(pick_rarest(&none, &a, &none, &avail, &mut rng), Some(3));
        assert_eq!(pick_rarest(&none, &b, &none, &avail, &mut rng), Some(2));
        assert_eq!(avail.count(0), 3);
        assert_eq!(avail.count(3), 1);
    }

    #[test]
    fn skips_pieces_we_have_and_pieces_in_flight() {
        let a = set(4, &[0, 1, 2, 3]);
        let b = set(4, &[0, 1]);
        let avail = availability(4, &[&a, &b]);
        let mut rng = StdRng::seed_from_u64(2);
        let ours = set(4, &[2]);
        let in_flight = set(4, &[3]);
        // 2 and 3 are rarest but taken; 0 and 1 remain (tied).
        let pick = pick_rarest(&ours, &a, &in_flight, &avail, &mut rng).unwrap();
        assert!(pick == 0 || pick == 1, "{pick}");
        let all = set(4, &[0, 1, 2, 3]);
        assert_eq!(pick_rarest(&all, &a, &in_flight, &avail, &mut rng), None);
        assert_eq!(
            pick_rarest(&ours, &PieceSet::new(4), &in_flight, &avail, &mut rng),
            None
        );
    }

    #[test]
    fn ties_are_broken_randomly_and_reproducibly() {
        let peer = PieceSet::full(8);
        let avail = availability(8, &[&peer]);
        let none = PieceSet::new(8);
        let picks = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..200)
                .map(|_| pick_rarest(&none, &peer, &none, &avail, &mut rng).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(picks(7), picks(7), "same seed, same choices");
        let mut seen = [0u32; 8];
        for p in picks(7) {
            seen[p as usize] += 1;
        }
        assert!(
            seen.iter().all(|&n| n > 5),
            "every tied piece gets picked: {seen:?}"
        );
    }

    #[test]
    fn a_window_keeps_picks_near_the_front() {
        let peer = PieceSet::full(100);
        let mut avail = availability(100, &[]);
        for i in 0..100 {
            if i % 3 == 0 {
                avail.peer_got(i);
            }
        }
        let ours = set(100, &[0, 1, 2, 3]);
        let none = PieceSet::new(100);
        let mut rng = StdRng::seed_from_u64(3);
        let window = Window {
            from: 4,
            len: 10,
            max_count: None,
        };
        for _ in 0..50 {
            let p = pick_rarest_in(&ours, &peer, &none, &avail, window, &mut rng).unwrap();
            assert!((4..14).contains(&p) && p % 3 != 0, "{p}");
        }
        let only_unique = Window {
            max_count: Some(0),
            ..Window::ALL
        };
        let all_held = PieceSet::full(100);
        let p = pick_rarest_in(&ours, &peer, &none, &avail, only_unique, &mut rng).unwrap();
        assert_ne!(p % 3, 0);
        let mut held = availability(100, &[&all_held]);
        held.peer_lost(50);
        assert_eq!(
            pick_rarest_in(&ours, &peer, &none, &held, only_unique, &mut rng),
            Some(50)
        );
    }

    #[test]
    fn availability_follows_peers() {
        let a = set(3, &[0, 1]);
        let mut avail = availability(3, &[&a]);
        avail.peer_got(2);
        assert_eq!((avail.count(0), avail.count(2)), (1, 1));
        avail.remove_peer(&a);
        assert_eq!((avail.count(0), avail.count(1)), (0, 0));
        avail.remove_peer(&a);
        assert_eq!(avail.count(0), 0, "never below zero");
        avail.peer_got(99);
        assert_eq!(avail.count(99), 0, "out of range is ignored");
    }
}
