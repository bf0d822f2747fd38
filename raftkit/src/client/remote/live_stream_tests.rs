//! A call on a member's live multiplexed request stream finds the stream
//! and its connection under the client's std lock alone: the connection
//! table's async lock, which dialling holds, is not on a write's path
//! (issue 16: a write's client side paid that lock and a second table
//! lookup on every call).

use std::time::Duration;

use super::{Client, ClientOptions};
use crate::client::Submit;
use crate::client::fake_member::{Act, FakeMember, session_opened};
use crate::client::wire::{ClientRequest, ClientResponse, WireError};
use crate::tls::{Identity, dev_cluster};

/// Bounds every wait of the test (none is reached when it passes).
const DEADLINE: Duration = Duration::from_secs(10);

/// How far past its 2 s timeout a write may end: a loaded CI machine (2
/// cores, every test binary at once) can stall a thread for seconds. It
/// was 2 s. The defects these tests pin never end the write at all: they
/// fail at [`DEADLINE`].
const SLACK: Duration = Duration::from_secs(5);

/// With the connection table's lock held (as a dial to another member
/// holds it), a write to the member whose stream is up is answered; and
/// once that stream's connection is gone, the next write dials afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_on_a_live_stream_does_not_wait_for_the_connection_table() {
    let (ca, nodes) = dev_cluster(["fake-live"]).expect("dev certificates");
    let client_id = ca.issue_client("live").expect("client certificate");
    let node = nodes.first().expect("one node");
    let member = FakeMember::start(node, |request| match request {
        ClientRequest::OpenSession => session_opened(9),
        ClientRequest::Write { .. } => Act::answer(ClientResponse::Ok(Vec::new())),
        other => Act::answer(ClientResponse::Err(WireError::Rejected(format!(
            "unexpected {other:?}"
        )))),
    });
    let opts = ClientOptions::default().with_timeout(DEADLINE);
    let client = tokio::time::timeout(
        DEADLINE,
        Client::connect_with([member.addr().to_string()], client_id, 0, opts),
    )
    .await
    .expect("connects in time")
    .expect("connects");
    tokio::time::timeout(DEADLINE, client.write(b"one".to_vec()))
        .await
        .expect("write 1 ends in time")
        .expect("write 1 answered");
    {
        let _dialling = client.inner.conns.lock().await;
        // Bounded by DEADLINE, the client's own timeout: a write that waits
        // for the held lock waits for ever, and ends either way (the outer
        // bound, or its timeout's `Err`) failing below. It was 2 s: one
        // stall of a loaded CI machine.
        let second = tokio::time::timeout(DEADLINE, client.write(b"two".to_vec()))
            .await
            .expect("write 2, on the member's live stream, waited for the connection table's lock");
        assert!(second.is_ok(), "write 2: {second:?}");
    }
    // The stream's connection closes: the next write finds it closed and
    // dials a new one (the path through the table), and is answered.
    let old = client
        .inner
        .conns
        .lock()
        .await
        .get(&member.addr())
        .cloned()
        .expect("the member's connection is kept");
    old.close(0u32.into(), b"test");
    let third = tokio::time::timeout(DEADLINE, client.write(b"three".to_vec()))
        .await
        .expect("write 3 ends in time");
    assert!(
        third.is_ok(),
        "write 3, after its connection closed: {third:?}"
    );
    let new = client
        .inner
        .conns
        .lock()
        .await
        .get(&member.addr())
        .cloned()
        .expect("a new connection is kept");
    assert_ne!(
        new.stable_id(),
        old.stable_id(),
        "the closed connection was reused"
    );
    assert_eq!(member.writes(), 3, "each write reached the member once");
}

/// Found by review (stop 51): a call on a live request stream has no timer
/// of its own (the stream's reading task times it, `mux`, "Deadlines"), so
/// when that task was gone without closing the stream (the runtime it ran
/// on was dropped: a client connected in a setup `block_on` and used from
/// another runtime), every later write waited for ever on a silent member.
/// Now the stream's tasks close it when they stop, whatever stops them: the
/// write finds the stream closed, retries by dialling under its deadline,
/// and ends by that deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_ends_by_its_deadline_after_the_runtime_of_its_stream_is_gone() {
    let (ca, nodes) = dev_cluster(["fake-gone"]).expect("dev certificates");
    let client_id = ca.issue_client("gone").expect("client certificate");
    let node = nodes.first().expect("one node");
    let mut writes = 0;
    let member = FakeMember::start(node, move |request| match request {
        ClientRequest::OpenSession => session_opened(9),
        ClientRequest::Write { .. } => {
            writes += 1;
            if writes == 1 {
                Act::answer(ClientResponse::Ok(Vec::new()))
            } else {
                // A member that stopped answering.
                Act::Ignore
            }
        }
        other => Act::answer(ClientResponse::Err(WireError::Rejected(format!(
            "unexpected {other:?}"
        )))),
    });
    // (2 s: the setup's first write must be answered within it on a loaded
    // CI machine; it was 500 ms.)
    let timeout = Duration::from_secs(2);
    let addr = member.addr().to_string();
    // Connected, and its stream started, in a runtime that is then dropped.
    let client = std::thread::spawn(move || {
        let (rt, client) = connected_on_own_runtime(addr, client_id, timeout);
        drop(rt);
        client
    })
    .join()
    .expect("the setup thread");
    let start = tokio::time::Instant::now();
    let second = tokio::time::timeout(DEADLINE, client.write(b"two".to_vec()))
        .await
        .expect("write 2 never ended (its stream's reading task is gone)");
    let took = start.elapsed();
    assert!(
        second.is_err(),
        "write 2 answered by a silent member: {second:?}"
    );
    assert!(
        took < timeout + SLACK,
        "write 2 ended after {took:?}, not by its deadline ({timeout:?})"
    );
}

/// Found by review (stop 51, review-landed #1): the runtime that ran a
/// stream's tasks was kept alive but never driven again (a current-thread
/// runtime outside its `block_on`: a client connected in a setup `block_on`
/// and used from another runtime, the runtime held in a struct). Nothing
/// dropped the tasks, so the stream stayed "live", a write's frame was
/// queued for a writer that never ran, and the write waited for ever, past
/// its deadline. A caller on another runtime than its stream's now times
/// its call itself: the write ends by its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_ends_by_its_deadline_when_the_runtime_of_its_stream_is_kept_but_idle() {
    let (ca, nodes) = dev_cluster(["fake-idle"]).expect("dev certificates");
    let client_id = ca.issue_client("idle").expect("client certificate");
    let node = nodes.first().expect("one node");
    let member = FakeMember::start(node, |request| match request {
        ClientRequest::OpenSession => session_opened(9),
        ClientRequest::Write { .. } => Act::answer(ClientResponse::Ok(Vec::new())),
        other => Act::answer(ClientResponse::Err(WireError::Rejected(format!(
            "unexpected {other:?}"
        )))),
    });
    // (2 s: the setup's first write must be answered within it on a loaded
    // CI machine; it was 500 ms.)
    let timeout = Duration::from_secs(2);
    let addr = member.addr().to_string();
    let (client_tx, client_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    // Connected, and its stream started, in a runtime that is kept (until
    // the test ends) and never driven again.
    let setup = std::thread::spawn(move || {
        let (rt, client) = connected_on_own_runtime(addr, client_id, timeout);
        client_tx
            .send(client)
            .expect("the test waits for the client");
        // Kept alive, not driven, until the test is done.
        let _ = done_rx.recv();
        drop(rt);
    });
    let client = tokio::task::spawn_blocking(move || client_rx.recv())
        .await
        .expect("the setup's receiver")
        .expect("the setup thread sends the client");
    let start = tokio::time::Instant::now();
    let second = tokio::time::timeout(DEADLINE, client.write(b"two".to_vec())).await;
    let took = start.elapsed();
    drop(done_tx);
    drop(client);
    let second = second.expect("write 2 never ended (its stream's runtime is idle)");
    assert!(
        second.is_err(),
        "write 2 answered through an idle runtime: {second:?}"
    );
    assert!(
        took < timeout + SLACK,
        "write 2 ended after {took:?}, not by its deadline ({timeout:?})"
    );
    tokio::task::spawn_blocking(move || setup.join())
        .await
        .expect("joined")
        .expect("the setup thread");
}

/// A client of the member at `addr` (call timeout `timeout`) connected,
/// and its stream started by a first write, on a current-thread runtime of
/// its own, which is returned with it and driven no more: the stream's
/// tasks live on that runtime. Call on a thread of no runtime.
fn connected_on_own_runtime(
    addr: String,
    client_id: Identity,
    timeout: Duration,
) -> (tokio::runtime::Runtime, Client) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let client = rt.block_on(async move {
        let opts = ClientOptions::default().with_timeout(timeout);
        let client = crate::client::fake_member::connect_patiently(&[addr], &client_id, opts).await;
        tokio::time::timeout(DEADLINE, client.write(b"one".to_vec()))
            .await
            .expect("write 1 ends in time")
            .expect("write 1 answered");
        client
    });
    (rt, client)
}

/// Runs `fut` to its end on this thread, with no tokio runtime (as
/// `futures::executor::block_on` does).
fn block_on_plain<F: std::future::Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let std::task::Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// Review s52 #5: a call on a live stream made from a thread in no tokio
/// context (the client's runtime runs elsewhere) was put under a tokio
/// timer, which panics with no runtime ("there is no reactor running").
/// It is answered as before the idle-runtime fix.
#[test]
fn a_call_from_a_thread_with_no_runtime_does_not_panic() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let (ca, nodes) = dev_cluster(["fake-plain"]).expect("dev certificates");
    let client_id = ca.issue_client("plain").expect("client certificate");
    let node = nodes.first().expect("one node");
    let (member, client) = runtime.block_on(async {
        let member = FakeMember::start(node, |request| match request {
            ClientRequest::OpenSession => session_opened(9),
            _ => Act::answer(ClientResponse::Ok(Vec::new())),
        });
        let opts = ClientOptions::default().with_timeout(DEADLINE);
        let client = Client::connect_with([member.addr().to_string()], client_id, 0, opts)
            .await
            .expect("connects");
        client
            .write(b"first".to_vec())
            .await
            .expect("the first write is answered");
        (member, client)
    });
    let outcome = std::thread::spawn(move || block_on_plain(client.write(b"plain".to_vec())))
        .join()
        .map_err(|panic| {
            panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default()
        });
    match outcome {
        Ok(write) => {
            write.expect("the write from a thread with no runtime is answered");
        }
        Err(panic) => panic!("a write from a thread with no runtime panicked: {panic}"),
    }
    drop(member);
}
