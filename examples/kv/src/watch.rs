//! `kv watch [PREFIX]`: prints the changes to keys starting with PREFIX as
//! the cluster applies them, one line each, until interrupted:
//!
//! ```text
//! INDEX<TAB>put<TAB>KEY<TAB>VALUE
//! INDEX<TAB>put<TAB>KEY<TAB>VALUE<TAB>ttl_ms=MS
//! INDEX<TAB>del<TAB>KEY
//! INDEX<TAB>cas<TAB>KEY<TAB>VALUE
//! ```
//!
//! Only writes that changed something are printed (a `del` of an absent key
//! or a `cas` that did not swap changes nothing); a key that expires by its
//! time-to-live changes without a line. The watch follows the cluster
//! through member failures by itself (`raftkit::client::watch`); it ends
//! with exit code 1 and one line on stderr when it cannot go on (the index
//! asked for was compacted, or this process read too slowly).

use std::io::Write;

use crate::cli::ClusterArgs;
use crate::commands::{cluster_addrs, options};
use crate::fail::Failure;
use crate::store::{KvClient, KvWrite, KvWriteOutput};

/// The line printed for one applied write, if it changed a key under
/// `prefix`.
pub fn line(index: u64, command: &KvWrite, output: &KvWriteOutput, prefix: &str) -> Option<String> {
    let (key, text) = match (command, output) {
        (KvWrite::Put { key, value }, _) => (key, format!("put\t{key}\t{value}")),
        (KvWrite::PutTtl { key, value, ttl_ms }, _) => {
            (key, format!("put\t{key}\t{value}\tttl_ms={ttl_ms}"))
        }
        (KvWrite::Delete { key }, KvWriteOutput::Delete(Some(_))) => (key, format!("del\t{key}")),
        (KvWrite::Cas { key, new, .. }, KvWriteOutput::Cas(Ok(()))) => {
            (key, format!("cas\t{key}\t{new}"))
        }
        _ => return None,
    };
    key.starts_with(prefix).then(|| format!("{index}\t{text}"))
}

/// `kv watch [PREFIX] [--from INDEX]`.
pub async fn run(args: &ClusterArgs, prefix: String, from: Option<u64>) -> Result<(), Failure> {
    let addrs = cluster_addrs(args)?;
    let identity = crate::certs::client_identity(args.certs.as_deref())?;
    let kv = KvClient::connect_with(&addrs, identity, options(args, 10))
        .await
        .map_err(|e| Failure::cluster(&e, &addrs))?;
    let mut watch = match from {
        Some(i) => kv.watch(i).await,
        None => kv.watch_from_now().await,
    }
    .map_err(|e| Failure::cluster(&e, &addrs))?;
    eprintln!(
        "watching {prefix:?} from index {}",
        watch.resume_from().unwrap_or(0)
    );
    let mut out = std::io::stdout().lock();
    while let Some(event) = watch.next().await {
        let event = event.map_err(|e| Failure::cluster(&e, &addrs))?;
        let Ok(output) = &event.output else {
            continue; // the handler panicked: nothing changed
        };
        if let Some(l) = line(event.index, &event.command, output, &prefix) {
            // A reader that went away ends the watch quietly.
            if writeln!(out, "{l}").and_then(|()| out.flush()).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Mismatch;

    #[test]
    fn only_changes_under_the_prefix_are_lines() {
        let put = KvWrite::Put {
            key: "p/a".into(),
            value: "1".into(),
        };
        assert_eq!(
            line(7, &put, &KvWriteOutput::Put(None), "p/").as_deref(),
            Some("7\tput\tp/a\t1")
        );
        assert_eq!(line(7, &put, &KvWriteOutput::Put(None), "q/"), None);
        let del = KvWrite::Delete { key: "p/a".into() };
        assert_eq!(
            line(8, &del, &KvWriteOutput::Delete(Some("1".into())), "").as_deref(),
            Some("8\tdel\tp/a")
        );
        assert_eq!(line(8, &del, &KvWriteOutput::Delete(None), ""), None);
        let cas = KvWrite::Cas {
            key: "p/c".into(),
            old: None,
            new: "3".into(),
        };
        assert_eq!(
            line(9, &cas, &KvWriteOutput::Cas(Ok(())), "p/").as_deref(),
            Some("9\tcas\tp/c\t3")
        );
        assert_eq!(
            line(9, &cas, &KvWriteOutput::Cas(Err(Mismatch(None))), "p/"),
            None
        );
    }
}
