//! What an operator sees: one request followed by its id from the client
//! through the leader to the apply, and a handler panic under `skip` as one
//! structured error event with nothing printed by the panic hook.
//!
//! One test function: it installs the process's tracing subscriber and
//! panic hook, which other tests in the same binary would share.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use raftkit::prelude::*;

#[derive(StateMachine, Default, Serialize, Deserialize)]
pub struct Kv {
    map: std::collections::BTreeMap<String, String>,
}

#[raftkit::state_machine]
impl Kv {
    #[write]
    fn put(&mut self, key: String, value: String) -> Option<String> {
        self.map.insert(key, value)
    }

    #[write]
    fn explode(&mut self, why: String) -> u64 {
        panic!("exploded: {why}")
    }

    #[read]
    fn get(&self, key: String) -> Option<String> {
        self.map.get(&key).cloned()
    }
}

/// Every formatted event, as text.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The 16 hex digits after `request_id=` in `line`.
fn request_id(line: &str) -> Option<&str> {
    let at = line.find("request_id=")? + "request_id=".len();
    line.get(at..at + 16)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_is_followed_by_its_id_and_a_handler_panic_is_one_event() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("raftkit=debug"))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    // The panic hook in place before any handler runs: raftkit wraps it and
    // must not call it for handler panics.
    let hook_calls = Arc::new(AtomicUsize::new(0));
    let calls = hook_calls.clone();
    std::panic::set_hook(Box::new(move |info| {
        calls.fetch_add(1, Ordering::SeqCst);
        eprintln!("{info}");
    }));

    let cluster = raftkit::dev::Cluster::<Kv>::start(3)
        .await
        .expect("cluster");
    let kv = cluster.client();
    assert_eq!(kv.put("k".into(), "v".into()).await.expect("put"), None);

    // The write's id, from the client's span.
    let lines = captured.lines();
    let sent = lines
        .iter()
        .find(|l| {
            l.contains("raftkit.call{") && l.contains("op=\"write\"") && l.contains("answered")
        })
        .unwrap_or_else(|| panic!("no client event of the write in:\n{}", lines.join("\n")));
    let id = request_id(sent).expect("a request id").to_string();
    let of_id: Vec<&String> = lines.iter().filter(|l| l.contains(&id)).collect();
    assert!(
        of_id
            .iter()
            .any(|l| l.contains("raftkit.request{") && l.contains("client request received")),
        "the leader's span of {id} is missing:\n{}",
        lines.join("\n")
    );
    assert!(
        of_id
            .iter()
            .any(|l| l.contains("raftkit.apply{") && l.contains("entry applied")),
        "the apply span of {id} is missing:\n{}",
        lines.join("\n")
    );
    // Another call has another id.
    assert_eq!(kv.get("k".into()).await.expect("get"), Some("v".into()));
    let read = captured
        .lines()
        .into_iter()
        .find(|l| l.contains("raftkit.read{") && l.contains("read served"))
        .expect("the read's span on the leader");
    assert_ne!(request_id(&read), Some(id.as_str()), "{read}");

    // A panic under `skip`: one error event (from the leader's and each
    // follower's apply), with the handler, index and message; the hook is
    // never called for it.
    let before = captured.lines().len();
    let err = kv
        .explode("on purpose".into())
        .await
        .expect_err("it panics");
    assert!(
        matches!(&err, raftkit::Error::Handler { message } if message == "exploded: on purpose"),
        "{err:?}"
    );
    // Wait until all three replicas applied it: its index is in the
    // panic event (the leader logged its own before answering). A peer's
    // status shows an applied index only after its apply thread applied it
    // (and so logged the panic), but it is published lazily: the leader's
    // status read right now may still show an earlier index.
    let index: u64 = captured
        .lines()
        .split_off(before)
        .iter()
        .find(|l| l.contains("a handler panicked"))
        .and_then(|l| {
            let at = l.find(" index=")? + " index=".len();
            let digits: String = l[at..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .expect("the leader's panic event names the entry's index");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    for p in cluster.peers() {
        let mut w = p.watch();
        let reached = tokio::time::timeout_at(deadline, w.wait_for(|s| s.applied >= index)).await;
        assert!(
            matches!(reached, Ok(Ok(_))),
            "{} did not apply entry {index}",
            p.name()
        );
    }
    let new: Vec<String> = captured.lines().split_off(before);
    let panics: Vec<&String> = new
        .iter()
        .filter(|l| l.contains("a handler panicked"))
        .collect();
    assert_eq!(
        panics.len(),
        3,
        "one event per replica:\n{}",
        new.join("\n")
    );
    for line in &panics {
        assert!(line.contains("ERROR"), "{line}");
        assert!(line.contains("handler=\"explode\""), "{line}");
        assert!(line.contains("panic=exploded: on purpose"), "{line}");
        assert!(line.contains("index="), "{line}");
        assert!(line.contains("policy=\"skip\""), "{line}");
    }
    assert_eq!(
        hook_calls.load(Ordering::SeqCst),
        0,
        "the panic hook printed a handler panic"
    );
    // Other panics still reach the hook.
    let _ = std::panic::catch_unwind(|| panic!("not a handler"));
    assert_eq!(hook_calls.load(Ordering::SeqCst), 1);

    // The cluster goes on.
    assert_eq!(
        kv.put("k".into(), "w".into()).await.expect("put"),
        Some("v".into())
    );
    cluster.shutdown().await.expect("shutdown");
}
