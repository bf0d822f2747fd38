//! The paper tests: one test per rule of the Raft paper (Figure 2,
//! §5.1–§5.4) and of the thesis extensions the core implements (PreVote,
//! CheckQuorum, ReadIndex, follower reads and leases (thesis §6.4.1), leadership transfer, joint consensus,
//! snapshots), in the manner of etcd's `raft_paper_test.go`.
//!
//! Each test builds one node or a small cluster of cores with given logs
//! and terms (see `harness`), drives it with ticks and messages, and checks
//! the messages and state that result.

mod apply_pause;
mod catch_up;
mod config;
mod flow_control;
mod follower_reads;
mod harness;
mod hostile;
mod joint;
mod lease;
mod membership;
mod non_voters;
mod paper_election;
mod paper_replication;
mod paper_safety;
mod read_index;
mod review_s57;
mod snapshot;
mod snapshot_receive;
mod transfer;
