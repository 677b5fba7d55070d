//! The async API (feature `tokio`): enqueue on the blocking pool with group
//! commit shared across tasks, waiting for work through the reactor and a
//! timer, `Send` handles, and no slot leaked by a cancelled task.
#![cfg(feature = "tokio")]

mod common;
use common::*;
use mailq::sim::SimFs;
use mailq::*;
use std::time::Duration;

/// Bounds every wait in these tests: a hang is a failure, not a stuck CI job.
const PATIENCE: Duration = Duration::from_secs(20);

fn assert_send<T: Send>() {}

#[test]
fn handles_and_futures_are_send() {
    assert_send::<AsyncQueue>();
    assert_send::<Session>();
    assert_send::<Delivery<'static>>();
    assert_send::<MessageBuilder>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_async_enqueues_share_fsyncs_and_are_durable() {
    let sim = SimFs::new();
    // Syncs of 20 ms: concurrent enqueues must overlap one in flight.
    sim.set_sync_delay(Duration::from_millis(20));
    let o = || Options {
        vfs: sim.vfs(),
        auto_maintenance: false,
        ..Options::default()
    };
    let q = AsyncQueue::new(Queue::open("/q", o()).unwrap()).unwrap();
    let before = q.queue().stats().fsyncs;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            let mut m = q.queue().message("a@src.example").unwrap();
            m.add_recipient(&format!("u{i}@dst.example"), None).unwrap();
            m.append(format!("message {i}").as_bytes()).unwrap();
            m.commit_async().await
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(
            tokio::time::timeout(PATIENCE, t)
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
        );
    }
    let syncs = q.queue().stats().fsyncs - before;
    // One sync each would take 64 × 20 ms; sharing them is the point.
    assert!(syncs < 32, "{syncs} data syncs for 64 concurrent enqueues");
    // Every acknowledged message survives losing whatever was not synced.
    drop(q);
    sim.set_sync_delay(Duration::ZERO);
    sim.restart(sim::CrashMode::LoseUnsynced, 0);
    let q = Queue::open("/q", o()).unwrap();
    for id in ids {
        assert_eq!(q.inspect(id).unwrap().recipients.len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_session_wakes_when_mail_arrives() {
    let d = TempDir::new("aio-wake");
    let q = AsyncQueue::new(Queue::open(d.path(), Options::default()).unwrap()).unwrap();
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move { q.next_session().await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished(), "a session with nothing queued");
    let mut m = q.queue().message("a@src.example").unwrap();
    m.add_recipient("b@wake.example", None).unwrap();
    let id = m.commit_async().await.unwrap();
    let mut s = tokio::time::timeout(PATIENCE, waiter)
        .await
        .expect("the waiter woke up")
        .unwrap()
        .unwrap();
    assert_eq!(s.routing_key(), "wake.example");
    let dl = s.next_delivery().unwrap().unwrap();
    assert_eq!(dl.id(), id);
    dl.complete(&[Outcome::Delivered]).unwrap();
    s.finish().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_session_wakes_for_a_retry_without_being_polled() {
    let d = TempDir::new("aio-retry");
    let o = Options {
        min_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(1),
        ..Options::default()
    };
    let q = AsyncQueue::new(Queue::open(d.path(), o).unwrap()).unwrap();
    let mut m = q.queue().message("a@src.example").unwrap();
    m.add_recipient("b@retry.example", None).unwrap();
    m.commit_async().await.unwrap();
    let mut s = q.next_session().await.unwrap();
    let dl = s.next_delivery().unwrap().unwrap();
    dl.complete(&[Outcome::temp("451 4.7.1 try again later")])
        .unwrap();
    s.finish().unwrap();
    // Nothing is ready now; only the retry timer (1 s) can make it ready, and
    // nobody calls tick: the wait itself must wake for it.
    assert!(q.queue().next_session().unwrap().is_none());
    let mut s = tokio::time::timeout(PATIENCE, q.next_session())
        .await
        .expect("woken for the retry")
        .unwrap();
    let dl = s.next_delivery().unwrap().unwrap();
    assert_eq!(dl.attempts(), &[1]);
    dl.complete(&[Outcome::Delivered]).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_delivery_task_leaks_no_slot() {
    let d = TempDir::new("aio-cancel");
    let q = AsyncQueue::new(Queue::open(d.path(), Options::default()).unwrap()).unwrap();
    let mut m = q.queue().message("a@src.example").unwrap();
    m.add_recipient("b@cancel.example", None).unwrap();
    let id = m.commit_async().await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = {
        let q = q.clone();
        tokio::spawn(async move {
            let mut s = q.next_session().await.unwrap();
            let dl = s.next_delivery().unwrap().unwrap();
            tx.send(dl.id()).unwrap();
            // Mid-transfer: the SMTP exchange never finishes.
            std::future::pending::<()>().await;
            drop(dl);
        })
    };
    assert_eq!(
        tokio::time::timeout(PATIENCE, rx).await.unwrap().unwrap(),
        id
    );
    let st = q.queue().stats();
    assert_eq!(st.count("inflight"), 1, "in flight while the task runs");
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    let st = q.queue().stats();
    assert_eq!(st.count("inflight"), 0, "the delivery went back");
    assert_eq!(st.count("ready"), 1);
    assert!(st.buckets.iter().all(|b| b.sessions == 0), "no slot leaked");
    let mut s = tokio::time::timeout(PATIENCE, q.next_session())
        .await
        .unwrap()
        .unwrap();
    let dl = s.next_delivery().unwrap().unwrap();
    assert_eq!(dl.id(), id);
    dl.complete(&[Outcome::Delivered]).unwrap();
}

#[test]
fn outside_a_runtime_it_is_an_error_not_a_panic() {
    let d = TempDir::new("aio-noruntime");
    let q = Queue::open(d.path(), Options::default()).unwrap();
    assert!(matches!(AsyncQueue::new(q), Err(Error::Io { .. })));
}
