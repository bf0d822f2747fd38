//! `Config::validate`: every setting the core cannot run with is refused
//! when the node is built, and the boundary just inside is taken.

use crate::core::{Config, MAX_ELECTION_TICKS, Raft};

use super::harness::*;

/// Found by mutation audit (stop 52, M12): no test fed `validate` a node
/// id 0, a heartbeat interval at the election timeout or a window of no
/// appends in flight, so any of those refusals could go (a window of 0
/// stalls replication after the first probe, silently).
#[test]
fn every_invalid_setting_is_refused() {
    type Tweak = fn(&mut Config);
    let refused: [(&str, Tweak); 8] = [
        ("node id 0", |c| c.id = 0),
        ("heartbeat_ticks", |c| c.heartbeat_ticks = 0),
        ("heartbeat_ticks", |c| c.heartbeat_ticks = c.election_ticks),
        ("max_inflight", |c| c.max_inflight = 0),
        ("clock_drift_bound", |c| c.clock_drift_bound = f64::INFINITY),
        ("snapshot_log_ratio", |c| c.snapshot_log_ratio = f64::NAN),
        // M8: empty chunks would carry a snapshot transfer no further.
        ("snapshot_chunk_bytes", |c| c.snapshot_chunk_bytes = 0),
        // Review stop 57: `[T, 2T)` overflowed u32 in `Raft::new` (a
        // panic in debug builds, an empty range in release).
        ("election_ticks", |c| {
            c.election_ticks = MAX_ELECTION_TICKS + 1
        }),
    ];
    for (name, tweak) in refused {
        let mut cfg = config(1);
        tweak(&mut cfg);
        match Raft::new(cfg, restored(&[1, 2, 3], 1, &[1])) {
            Err(e) => assert!(e.to_string().contains(name), "{name}: {e}"),
            Ok(_) => panic!("{name}: an invalid setting was taken"),
        }
    }
    let taken: [Tweak; 5] = [
        |c| c.election_ticks = MAX_ELECTION_TICKS,
        |c| c.heartbeat_ticks = c.election_ticks - 1,
        |c| c.heartbeat_ticks = 1,
        |c| c.max_inflight = 1,
        |c| c.snapshot_chunk_bytes = 1,
    ];
    for tweak in taken {
        let mut cfg = config(1);
        tweak(&mut cfg);
        assert!(Raft::new(cfg, restored(&[1, 2, 3], 1, &[1])).is_ok());
    }
}
