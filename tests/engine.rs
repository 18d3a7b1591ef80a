//! The ZooKeeper lock engine against a real ZooKeeper server.

mod common;

use std::time::Duration;

use common::*;
use lockkeeper::lock_rules::{LockKind, Mode};
use lockkeeper::zookeeper::znode_name::ContenderId;
use lockkeeper::zookeeper::{
    ContenderState, Credentials, EngineConfig, EngineError, LockEngine, LockSpec, LossReason,
    SessionStatus,
};
use lockkeeper_testkit::ZooKeeperServer;

#[tokio::test]
async fn mutex_grants_in_queue_order_and_tokens_grow() {
    let zk = zookeeper();
    let engine = engine(&zk).await;
    let lock = mutex("/lockkeeper/default/migrations");
    let mut first = enqueue(&engine, &lock, "first", Mode::Exclusive).await;
    let mut second = enqueue(&engine, &lock, "second", Mode::Exclusive).await;
    let mut third = enqueue(&engine, &lock, "third", Mode::Exclusive).await;

    assert!(
        is_granted(&first.state()),
        "the head holds: {:?}",
        first.state()
    );
    assert_eq!(
        second.state(),
        ContenderState::Waiting {
            position: 1,
            waits_on: Some(first.node.clone())
        }
    );
    assert_eq!(
        third.state(),
        ContenderState::Waiting {
            position: 2,
            waits_on: Some(second.node.clone())
        }
    );
    assert!(
        first.node.starts_with("_c_first-lock-"),
        "Curator's protected mutex name: {}",
        first.node
    );

    let token1 = first.wait_granted(PATIENCE).await.unwrap();
    engine.dequeue(&lock, &first.id).await.unwrap();
    assert_eq!(first.changed().await, ContenderState::Released);
    let token2 = second.wait_granted(PATIENCE).await.unwrap();
    assert!(
        token2 > token1,
        "fencing tokens grow: {token1} then {token2}"
    );
    wait_for(&mut third, "first in line", |s| {
        *s == ContenderState::Waiting {
            position: 1,
            waits_on: Some(second.node.clone()),
        }
    })
    .await;
    engine.dequeue(&lock, &second.id).await.unwrap();
    let token3 = third.wait_granted(PATIENCE).await.unwrap();
    assert!(token3 > token2);

    let queue = engine.queue(&lock).await.unwrap();
    assert_eq!(queue.entries.len(), 1);
    assert_eq!(queue.holders().next().unwrap().fencing_token, Some(token3));
    assert_eq!(
        queue.holders().next().unwrap().owner.as_deref(),
        Some("third")
    );
}

#[tokio::test]
async fn readers_share_and_a_waiting_writer_blocks_later_readers() {
    let zk = zookeeper();
    let engine = engine(&zk).await;
    let lock = LockSpec::new("/locks/report", LockKind::ReadWrite).unwrap();
    let mut r1 = enqueue(&engine, &lock, "r1", Mode::Shared).await;
    let mut r2 = enqueue(&engine, &lock, "r2", Mode::Shared).await;
    let mut w = enqueue(&engine, &lock, "w", Mode::Exclusive).await;
    let mut r3 = enqueue(&engine, &lock, "r3", Mode::Shared).await;
    assert!(
        is_granted(&r1.state()) && is_granted(&r2.state()),
        "readers share"
    );
    assert!(is_waiting(&w.state()), "the writer waits for the readers");
    assert_eq!(
        r3.state(),
        ContenderState::Waiting {
            position: 3,
            waits_on: Some(w.node.clone())
        },
        "no writer starvation"
    );
    assert!(
        r1.node.contains("__READ__") && w.node.contains("__WRIT__"),
        "Curator's read-write names"
    );

    engine.dequeue(&lock, &r1.id).await.unwrap();
    assert!(is_waiting(&w.state()));
    engine.dequeue(&lock, &r2.id).await.unwrap();
    w.wait_granted(PATIENCE).await.unwrap();
    assert!(is_waiting(&r3.state()));
    engine.dequeue(&lock, &w.id).await.unwrap();
    r3.wait_granted(PATIENCE).await.unwrap();
    let _ = (r1.changed().await, r2.changed().await);
}

#[tokio::test]
async fn semaphore_lets_in_a_waiter_whichever_holder_leaves() {
    let zk = zookeeper();
    let engine = engine(&zk).await;
    let lock = LockSpec::new("/locks/pool", LockKind::semaphore(2).unwrap()).unwrap();
    let a = enqueue(&engine, &lock, "a", Mode::Exclusive).await;
    let b = enqueue(&engine, &lock, "b", Mode::Exclusive).await;
    let mut c = enqueue(&engine, &lock, "c", Mode::Exclusive).await;
    let mut d = enqueue(&engine, &lock, "d", Mode::Exclusive).await;
    assert!(is_granted(&a.state()) && is_granted(&b.state()));
    assert_eq!(
        c.state(),
        ContenderState::Waiting {
            position: 2,
            waits_on: None
        }
    );
    assert_eq!(
        c.dir, "/locks/pool/leases",
        "Curator InterProcessSemaphoreV2 layout"
    );
    // The second holder leaves, not the first: c must still be let in.
    engine.dequeue(&lock, &b.id).await.unwrap();
    c.wait_granted(PATIENCE).await.unwrap();
    wait_for(&mut d, "next in line", |s| {
        *s == ContenderState::Waiting {
            position: 2,
            waits_on: None,
        }
    })
    .await;
    engine.dequeue(&lock, &a.id).await.unwrap();
    d.wait_granted(PATIENCE).await.unwrap();
    assert_eq!(engine.queue(&lock).await.unwrap().holders().count(), 2);
}

#[tokio::test]
async fn enqueue_again_returns_the_same_node_and_dequeue_is_idempotent_by_id() {
    let zk = zookeeper();
    let engine = engine(&zk).await;
    let lock = mutex("/locks/idempotent");
    let first = enqueue(&engine, &lock, "claim-1", Mode::Exclusive).await;
    let again = enqueue(&engine, &lock, "claim-1", Mode::Exclusive).await;
    assert!(again.adopted);
    assert_eq!(
        (again.node.as_str(), again.fencing_token),
        (first.node.as_str(), first.fencing_token)
    );
    assert_eq!(
        engine.queue(&lock).await.unwrap().entries.len(),
        1,
        "no duplicate node"
    );
    let err = engine
        .enqueue(&lock, &id("claim-1"), Mode::Shared, b"")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("only ReadWrite locks take Shared"),
        "{err}"
    );
    engine.dequeue(&lock, &id("claim-1")).await.unwrap();
    let err = engine.dequeue(&lock, &id("claim-1")).await.unwrap_err();
    assert!(matches!(err, EngineError::NotQueued { .. }), "{err}");
}

#[tokio::test]
async fn session_expiry_reports_every_contender_lost_then_a_new_session_serves() {
    let zk = zookeeper();
    let proxy = lockkeeper_testkit::CuttingProxy::start(zk.port()).unwrap();
    let mut config = common::config(&zk);
    config.connect = proxy.connect_string();
    let engine = LockEngine::connect(config).await.unwrap();
    let mut events = engine.events().unwrap();
    let locks = [mutex("/locks/a"), mutex("/locks/b")];
    let mut contenders = Vec::new();
    for (i, lock) in locks.iter().enumerate() {
        contenders.push(enqueue(&engine, lock, &format!("holder-{i}"), Mode::Exclusive).await);
        contenders.push(enqueue(&engine, lock, &format!("waiter-{i}"), Mode::Exclusive).await);
    }
    let old_session = engine.session().unwrap();

    // Expire the session from outside: open it a second time and close that handle.
    expire_from_outside(&zk, &proxy, old_session.clone()).await;

    for contender in &mut contenders {
        let state = wait_for(contender, "lost", |s| matches!(s, ContenderState::Lost(_))).await;
        assert!(session_lost(&state), "{state:?}");
    }
    let mut lost = std::collections::HashSet::new();
    while lost.len() < 4 {
        let event = tokio::time::timeout(PATIENCE, events.recv())
            .await
            .unwrap()
            .unwrap();
        if session_lost(&event.state) {
            lost.insert(event.id);
        }
    }

    let mut status = engine.session_status();
    tokio::time::timeout(PATIENCE, status.wait_for(|s| matches!(s, SessionStatus::Connected { session_id } if *session_id != old_session.id().0)))
        .await
        .unwrap()
        .unwrap();
    let mut again = enqueue(&engine, &locks[0], "holder-0", Mode::Exclusive).await;
    again.wait_granted(PATIENCE).await.unwrap();
}

#[tokio::test]
async fn a_resumed_session_keeps_its_nodes_and_grants() {
    let zk = zookeeper();
    let lock = mutex("/locks/resume");
    let mut config = config(&zk);
    config.keep_session_on_drop = true;
    let first = LockEngine::connect(config.clone()).await.unwrap();
    let mut held = enqueue(&first, &lock, "holder", Mode::Exclusive).await;
    let token = held.wait_granted(PATIENCE).await.unwrap();
    let session = first.session().unwrap();
    drop(first); // a crash: the session is not closed

    config.resume = Some(session.clone());
    let second = LockEngine::connect(config).await.unwrap();
    assert_eq!(second.session().unwrap().id(), session.id());
    let mut resumed = enqueue(&second, &lock, "holder", Mode::Exclusive).await;
    assert!(resumed.adopted, "the node is adopted, not created again");
    let resumed_token = resumed.wait_granted(PATIENCE).await.unwrap();
    assert_eq!(
        (resumed.node.as_str(), resumed_token),
        (held.node.as_str(), token)
    );

    let other = engine(&zk).await;
    let waiter = enqueue(&other, &lock, "waiter", Mode::Exclusive).await;
    assert!(
        is_waiting(&waiter.state()),
        "the resumed grant still excludes others"
    );
    second.dequeue(&lock, &resumed.id).await.unwrap();
    let mut waiter = waiter;
    waiter.wait_granted(PATIENCE).await.unwrap();
}

/// Curator's CURATOR-604 (still open): `acquire` trusts a node with its id that an earlier
/// session left, and takes the lock on a node that vanishes when that session expires. Here a
/// new session never adopts such a node: it deletes it and queues a node of its own, whose
/// grant outlives the dead session.
#[tokio::test]
async fn a_new_session_replaces_the_stale_node_of_a_dead_one() {
    let zk = zookeeper();
    let lock = mutex("/locks/stale");
    let mut config = config(&zk);
    config.keep_session_on_drop = true;
    let crashed = LockEngine::connect(config).await.unwrap();
    let stale = enqueue(&crashed, &lock, "claim", Mode::Exclusive).await;
    drop(crashed);
    let fresh = engine(&zk).await;
    let mut replaced = enqueue(&fresh, &lock, "claim", Mode::Exclusive).await;
    assert_eq!((replaced.adopted, replaced.replaced_stale), (false, 1));
    assert_ne!(replaced.node, stale.node, "a node of the new session's own");
    let queue = fresh.queue(&lock).await.unwrap();
    assert_eq!(queue.entries.len(), 1, "the stale node is gone: {queue:?}");
    replaced.wait_granted(PATIENCE).await.unwrap();
}

/// A new leader queues a lock's claims again as one burst: each keeps its place in the given
/// order, each one's node left by the dead session is replaced, and a refused one does not
/// hold up the rest.
#[tokio::test]
async fn a_burst_queued_in_order_keeps_its_order_and_replaces_stale_nodes() {
    let zk = zookeeper();
    let lock = mutex("/locks/burst");
    let mut config = config(&zk);
    config.keep_session_on_drop = true;
    let crashed = LockEngine::connect(config).await.unwrap();
    enqueue(&crashed, &lock, "holder", Mode::Exclusive).await;
    enqueue(&crashed, &lock, "waiter", Mode::Exclusive).await;
    drop(crashed);

    let fresh = engine(&zk).await;
    let burst = [
        ("holder", Mode::Exclusive),
        ("reader", Mode::Shared),
        ("waiter", Mode::Exclusive),
        ("newcomer", Mode::Exclusive),
    ]
    .map(|(name, mode)| (id(name), mode, name.as_bytes().to_vec()));
    let mut answers = fresh.enqueue_in_order(&lock, burst).await.into_iter();
    let holder = answers.next().unwrap().expect("the holder is queued");
    match answers.next().unwrap() {
        Err(EngineError::Rule(err)) => assert!(
            err.to_string().contains("Shared"),
            "the refusal names the mode: {err}"
        ),
        other => panic!("a shared contender on a mutex is refused, got {other:?}"),
    }
    let waiter = answers.next().unwrap().expect("the waiter is queued");
    let newcomer = answers.next().unwrap().expect("the newcomer is queued");
    assert!(answers.next().is_none(), "one answer per contender");

    assert!(is_granted(&holder.state()), "{:?}", holder.state());
    assert_eq!(
        waiter.state(),
        ContenderState::Waiting {
            position: 1,
            waits_on: Some(holder.node.clone())
        }
    );
    assert_eq!(
        newcomer.state(),
        ContenderState::Waiting {
            position: 2,
            waits_on: Some(waiter.node.clone())
        }
    );
    let replaced: Vec<usize> = [&holder, &waiter, &newcomer]
        .iter()
        .map(|c| c.replaced_stale)
        .collect();
    assert_eq!(replaced, [1, 1, 0], "the dead session's nodes are replaced");
    let queue = fresh.queue(&lock).await.unwrap();
    let owners: Vec<Option<&str>> = queue.entries.iter().map(|e| e.owner.as_deref()).collect();
    assert_eq!(
        owners,
        [Some("holder"), Some("waiter"), Some("newcomer")],
        "nothing else is left in the queue"
    );
}

#[tokio::test]
async fn zookeeper_down_past_the_session_timeout_loses_grants_and_the_engine_recovers() {
    let mut zk = zookeeper();
    let engine = engine(&zk).await;
    let lock = mutex("/locks/outage");
    let mut held = enqueue(&engine, &lock, "holder", Mode::Exclusive).await;
    held.wait_granted(PATIENCE).await.unwrap();
    let timeout = engine.session_timeout().unwrap();
    zk.stop().unwrap();
    let mut status = engine.session_status();
    tokio::time::timeout(
        PATIENCE,
        status.wait_for(|s| matches!(s, SessionStatus::Disconnected { .. })),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        is_granted(&held.state()),
        "within the session timeout the grant still stands"
    );
    let state = wait_for(&mut held, "lost", |s| matches!(s, ContenderState::Lost(_))).await;
    assert_eq!(
        state,
        ContenderState::Lost(LossReason::SessionPresumedExpired(timeout))
    );
    zk.restart().unwrap();
    tokio::time::timeout(
        PATIENCE * 2,
        status.wait_for(|s| matches!(s, SessionStatus::Connected { .. })),
    )
    .await
    .unwrap()
    .unwrap();
    let mut again = enqueue(&engine, &lock, "holder-again", Mode::Exclusive).await;
    // The old session's node may linger until ZooKeeper expires it; then this one holds.
    again.wait_granted(PATIENCE).await.unwrap();
}

#[tokio::test]
async fn a_holder_whose_node_is_deleted_by_someone_else_is_lost() {
    let zk = zookeeper();
    let engine = engine(&zk).await;
    let lock = mutex("/locks/vanish");
    let mut held = enqueue(&engine, &lock, "holder", Mode::Exclusive).await;
    let mut next = enqueue(&engine, &lock, "next", Mode::Exclusive).await;
    held.wait_granted(PATIENCE).await.unwrap();
    let admin = zookeeper_client::Client::connect(&zk.connect_string())
        .await
        .unwrap();
    admin.delete(&held.path(), None).await.unwrap();
    let state = wait_for(&mut held, "lost", |s| matches!(s, ContenderState::Lost(_))).await;
    assert_eq!(state, ContenderState::Lost(LossReason::NodeDeleted));
    let err = held.wait_granted(PATIENCE).await.unwrap_err();
    assert!(
        err.to_string().contains("deleted by another client"),
        "{err}"
    );
    next.wait_granted(PATIENCE).await.unwrap();
}

#[tokio::test]
async fn bad_input_gets_typed_errors_with_clear_messages() {
    let zk = zookeeper();
    let engine = engine(&zk).await;
    let err = LockSpec::new("no-slash", LockKind::Mutex).unwrap_err();
    assert!(err.to_string().contains("must start with /"), "{err}");
    let err = LockSpec::new(&format!("/{}", "x".repeat(2000)), LockKind::Mutex).unwrap_err();
    assert!(err.to_string().contains("limit is 1024"), "{err}");
    let err = LockKind::semaphore(0).unwrap_err();
    assert!(err.to_string().contains("at least 1 permit"), "{err}");
    assert!(ContenderId::new("has/slash").is_err());

    let lock = mutex("/locks/kinds");
    enqueue(&engine, &lock, "m", Mode::Exclusive).await;
    let as_rw = LockSpec::new("/locks/kinds", LockKind::ReadWrite).unwrap();
    let err = engine
        .enqueue(&as_rw, &id("r"), Mode::Shared, b"")
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::KindMismatch { .. }), "{err}");

    let err = engine
        .enqueue(&mutex("/locks/kinds"), &id("s"), Mode::Shared, b"")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("Shared contenders are not allowed on a Mutex lock"),
        "{err}"
    );

    let mut waiter = enqueue(&engine, &lock, "waiter", Mode::Exclusive).await;
    let err = waiter
        .wait_granted(Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::WaitTimeout { .. }),
        "every wait has a deadline: {err}"
    );
}

#[tokio::test]
async fn an_unreachable_ensemble_fails_within_the_connect_timeout() {
    let port = lockkeeper_testkit::zookeeper_server::free_port().unwrap();
    let mut config = EngineConfig::new(format!("127.0.0.1:{port}"));
    config.connect_timeout = Duration::from_millis(800);
    let started = std::time::Instant::now();
    let err = LockEngine::connect(config)
        .await
        .err()
        .expect("nobody listens there");
    assert!(matches!(err, EngineError::Unreachable { .. }), "{err}");
    assert!(
        err.to_string().contains("is it running and reachable"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let mut config = EngineConfig::new("not a host list");
    config.connect_timeout = Duration::from_secs(1);
    let err = LockEngine::connect(config).await.err().unwrap();
    assert!(
        matches!(
            err,
            EngineError::BadConnectString { .. } | EngineError::Unreachable { .. }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn nodes_are_readable_by_all_but_writable_only_by_the_engine() {
    let zk = zookeeper();
    let mut config = config(&zk);
    config.credentials = Some(Credentials {
        user: "lockkeeper".into(),
        password: "s3cret".into(),
    });
    let engine = LockEngine::connect(config).await.unwrap();
    let held = enqueue(&engine, &mutex("/locks/acl"), "holder", Mode::Exclusive).await;
    let stranger = zookeeper_client::Client::connect(&zk.connect_string())
        .await
        .unwrap();
    let (data, _) = stranger.get_data(&held.path()).await.unwrap();
    assert_eq!(data, b"holder");
    let err = stranger
        .set_data(&held.path(), b"mine now", None)
        .await
        .unwrap_err();
    assert_eq!(err, zookeeper_client::Error::NoAuth);
    let (acl, _) = stranger.get_acl(&held.path()).await.unwrap();
    assert!(
        acl.iter()
            .any(|a| a.scheme() == "digest" && a.id().starts_with("lockkeeper:")),
        "{acl:?}"
    );
}

#[tokio::test]
async fn each_waiter_holds_one_watch_at_most() {
    let zk: ZooKeeperServer = zookeeper();
    let engine = engine(&zk).await;
    let lock = mutex("/locks/herd");
    let mut contenders = Vec::new();
    for i in 0..20 {
        contenders.push(enqueue(&engine, &lock, &format!("c{i:02}"), Mode::Exclusive).await);
    }
    let watches = || {
        let answer = zk.four_letter("wchs").unwrap();
        answer
            .lines()
            .find_map(|l| l.strip_prefix("Total watches:"))
            .and_then(|n| n.trim().parse::<usize>().ok())
            .unwrap()
    };
    // 19 waiters each on its predecessor; the holder watches its own node, the same path as
    // its successor's watch, and ZooKeeper counts one watch per path and session.
    eventually("every watch is set", || watches() == 19).await;
    engine.dequeue(&lock, &contenders[0].id).await.unwrap();
    contenders[1].wait_granted(PATIENCE).await.unwrap();
    eventually("one watch fired and none was added", || watches() == 18).await;
}

#[tokio::test]
async fn closing_the_engine_ends_every_contender_and_frees_its_locks() {
    let zk = zookeeper();
    let closing = common::engine(&zk).await;
    let other = common::engine(&zk).await;
    let lock = mutex("/locks/close");
    let mut held = enqueue(&closing, &lock, "holder", Mode::Exclusive).await;
    let mut next = enqueue(&other, &lock, "next", Mode::Exclusive).await;
    assert!(is_waiting(&next.state()));
    closing.close().await;
    let state = wait_for(&mut held, "ended", ContenderState::is_final).await;
    assert_eq!(state, ContenderState::Lost(LossReason::EngineClosed));
    // The closed session took its node with it: the next contender holds at once.
    next.wait_granted(PATIENCE).await.unwrap();
}

/// Expires a session the way ZooKeeper's FAQ suggests: open it a second time, then close that
/// second handle. The engine reaches ZooKeeper through `proxy`, which keeps it off the session
/// meanwhile (otherwise the two handles take the session from each other and the second one's
/// handshake can time out).
async fn expire_from_outside(
    zk: &ZooKeeperServer,
    proxy: &lockkeeper_testkit::CuttingProxy,
    session: lockkeeper::zookeeper::SessionInfo,
) {
    proxy.set_refusing(true);
    proxy.cut_all();
    let twin = zookeeper_client::Client::connector()
        .with_session(session)
        .with_session_timeout(Duration::from_secs(4))
        .with_connection_timeout(Duration::from_secs(5))
        .connect(&zk.connect_string())
        .await;
    match twin {
        Ok(twin) => drop(twin),
        // Already expired: what this was for.
        Err(zookeeper_client::Error::SessionExpired) => {}
        Err(err) => panic!("could not open the session a second time: {err}"),
    }
    proxy.set_refusing(false);
}

/// Lost with its session: expired, or given up after the session timeout without ZooKeeper
/// (which of the two depends on whether the client hears of the expiry before its timer ends).
fn session_lost(state: &ContenderState) -> bool {
    matches!(
        state,
        ContenderState::Lost(LossReason::SessionExpired | LossReason::SessionPresumedExpired(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_losses_during_enqueue_never_duplicate_a_node() {
    let zk = zookeeper();
    let proxy = lockkeeper_testkit::CuttingProxy::start(zk.port()).unwrap();
    let mut config = EngineConfig::new(proxy.connect_string());
    config.session_timeout = Duration::from_secs(10);
    let engine = LockEngine::connect(config).await.unwrap();
    let session = engine.session().unwrap().id();
    let locks: Vec<LockSpec> = (0..4).map(|i| mutex(&format!("/locks/cut-{i}"))).collect();

    let proxy = std::sync::Arc::new(proxy);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cutter = {
        let (proxy, stop) = (proxy.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut cuts = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(15));
                cuts += proxy.cut_all();
            }
            cuts
        })
    };
    let enqueues = (0..120).map(|i| {
        let (engine, lock) = (engine.clone(), locks[i % locks.len()].clone());
        tokio::spawn(async move {
            engine
                .enqueue(&lock, &id(&format!("claim-{i}")), Mode::Exclusive, b"")
                .await
        })
    });
    let results = futures::future::join_all(enqueues).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let cuts = cutter.join().unwrap();
    assert!(cuts >= 3, "connections were cut {cuts} times");
    let mut adopted = 0;
    for result in results {
        adopted += result
            .unwrap()
            .expect("every enqueue succeeds across connection losses")
            .adopted as usize;
    }
    println!("{cuts} cuts; {adopted} creates answered only after a reconnect, found again by id");
    assert_eq!(
        engine.session().unwrap().id(),
        session,
        "the session survived the cuts"
    );

    let direct = zookeeper_client::Client::connect(&zk.connect_string())
        .await
        .unwrap();
    let mut owners = std::collections::HashMap::new();
    for lock in &locks {
        for child in direct.list_children(lock.path.as_str()).await.unwrap() {
            let owner = lockkeeper::zookeeper::znode_name::ContenderNode::parse(&child)
                .unwrap()
                .owner
                .unwrap();
            *owners.entry(owner).or_insert(0) += 1;
        }
    }
    assert_eq!(owners.len(), 120, "every claim has a node");
    assert!(
        owners.values().all(|&n| n == 1),
        "a claim has two nodes: {owners:?}"
    );
}

/// Replicas of one installation (one ensemble and root) agree on its id, which lasts beyond
/// their sessions; another root is another installation.
#[tokio::test]
async fn replicas_under_one_root_share_an_installation_id_and_another_root_has_its_own() {
    let zk = zookeeper();
    let first = engine(&zk).await;
    let second = engine(&zk).await;
    let (a, b) = tokio::join!(
        first.installation_id("/lockkeeper/prod"),
        second.installation_id("/lockkeeper/prod/")
    );
    let id = a.unwrap();
    assert_eq!(b.unwrap(), id, "two replicas asking at once get one id");
    assert!(uuid_like(&id), "{id}");
    first.close().await;
    second.close().await;
    let later = engine(&zk).await;
    assert_eq!(
        later.installation_id("/lockkeeper/prod").await.unwrap(),
        id,
        "the id outlives the sessions that made it"
    );
    let other = later.installation_id("/lockkeeper/staging").await.unwrap();
    assert!(uuid_like(&other) && other != id, "{other}");
}

fn uuid_like(id: &str) -> bool {
    id.len() == 36 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// On a three-server ensemble, killing the server that leads it costs no grant: the others
/// elect a new leader within the session timeout, the engine's session moves to a surviving
/// server, the holder keeps its grant (no `Lost`), and the lock hands on as usual. The killed
/// server comes back with its data and serves again.
#[tokio::test]
async fn a_grant_survives_the_loss_of_the_ensembles_leader() {
    let mut ensemble =
        lockkeeper_testkit::ZooKeeperEnsemble::start(3).expect("the ensemble starts");
    let mut config = EngineConfig::new(ensemble.connect_string());
    config.session_timeout = Duration::from_secs(6);
    let engine = LockEngine::connect(config)
        .await
        .expect("the engine connects");
    let mut events = engine.events().expect("the engine's events");
    let lock = mutex("/lockkeeper/default/ensemble");
    let mut holder = enqueue(&engine, &lock, "holder", Mode::Exclusive).await;
    let mut waiter = enqueue(&engine, &lock, "waiter", Mode::Exclusive).await;
    let token = holder.wait_granted(PATIENCE).await.unwrap();

    let leader = ensemble.leader().expect("the ensemble has a leader");
    ensemble.kill(leader).unwrap();
    eventually("another server leads", || {
        ensemble.leader().is_some_and(|now| now != leader)
    })
    .await;
    // Past the session timeout: a session that did not move would have expired by now.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(is_granted(&holder.state()), "{:?}", holder.state());
    assert!(is_waiting(&waiter.state()), "{:?}", waiter.state());
    assert!(
        matches!(
            *engine.session_status().borrow(),
            SessionStatus::Connected { .. }
        ),
        "the session moved to a surviving server"
    );
    engine.dequeue(&lock, &holder.id).await.unwrap();
    let next = waiter.wait_granted(PATIENCE).await.unwrap();
    assert!(next > token, "the lock handed on: {token} then {next}");
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(event.state, ContenderState::Lost(_)),
            "no contender was lost: {event:?}"
        );
    }
    ensemble
        .restart(leader)
        .expect("the killed server comes back and serves");
}
