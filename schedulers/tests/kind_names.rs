//! The names operators type (`--scheduler`, annotations) parse and print consistently.

use schedulers::{SchedulerKind, UnknownScheduler};

#[test]
fn display_parse_round_trip() {
    for k in SchedulerKind::ALL {
        let name = k.to_string();
        assert_eq!(name, k.as_str());
        assert_eq!(name.parse::<SchedulerKind>(), Ok(k));
        assert_eq!(name.to_uppercase().parse::<SchedulerKind>(), Ok(k), "case-insensitive");
        assert_eq!(format!(" {name}\n").parse::<SchedulerKind>(), Ok(k), "trimmed");
    }
}

#[test]
fn names_are_unique_and_ipvs_style() {
    let names: std::collections::HashSet<&str> = SchedulerKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(names.len(), SchedulerKind::ALL.len());
    for ipvs in ["rr", "wrr", "lc", "wlc", "dh", "sh", "sed", "nq"] {
        assert!(names.contains(ipvs), "{ipvs}");
    }
}

#[test]
fn peak_ewma_alias() {
    assert_eq!("peak-ewma".parse::<SchedulerKind>(), Ok(SchedulerKind::Ewma));
}

#[test]
fn unknown_name_is_an_error_that_says_what_was_given() {
    for bad in ["", "roundrobin", "mh", "lblc", "wrr2"] {
        let err = bad.parse::<SchedulerKind>();
        assert_eq!(err, Err(UnknownScheduler { given: bad.to_string() }));
        let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains(&format!("{bad:?}")) && msg.contains("maglev"), "{msg}");
    }
}
