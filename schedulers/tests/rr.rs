//! Round robin: exact evenness and retry behaviour.

mod common;

use common::{ctx, set};
use schedulers::rr::RoundRobin;
use schedulers::{Scheduler, Tried};

#[test]
fn exactly_even_over_whole_rounds() {
    let weights = [1, 5, 0, 1, 2];
    let s = RoundRobin::new(set(&weights));
    let mut counts = [0usize; 5];
    let order: Vec<usize> = (0..4 * 11).filter_map(|i| s.pick(&ctx(i), &Tried::new())).collect();
    for &b in &order {
        counts[b] += 1;
    }
    assert_eq!(counts, [11, 11, 0, 11, 11], "rr ignores weight except 0");
    assert_eq!(&order[..8], [0, 1, 3, 4, 0, 1, 3, 4], "set order");
}

#[test]
fn retry_skips_the_tried_one_without_taking_a_turn() {
    let s = RoundRobin::new(set(&[1, 1, 1]));
    assert_eq!(s.pick(&ctx(0), &Tried::new()), Some(0));
    let mut tried = Tried::new();
    tried.push(1);
    // The rotation stands at 1; 1 failed before, so 2.
    assert_eq!(s.pick(&ctx(0), &tried), Some(2));
    tried.push(2);
    tried.push(0);
    assert_eq!(s.pick(&ctx(0), &tried), None);
    // Retries did not advance the rotation.
    assert_eq!(s.pick(&ctx(1), &Tried::new()), Some(1));
}
