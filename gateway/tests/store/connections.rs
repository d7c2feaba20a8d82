//! The connection log on both backends: connecting, sessions listed and closed, purged, batched.

use super::*;

pub(crate) async fn connect_migrates_idempotently_and_pings(db: Db) {
    db.store.ping().await.unwrap();
    // A second connect runs the (already applied) migrations again: a no-op.
    let again = db.another_node().await;
    again.ping().await.unwrap();
    assert_eq!(again.backend(), db.store.backend());
    again.close().await;
}

pub(crate) async fn an_unreachable_database_fails_fast_naming_it_without_password(db: Db) {
    let (url, named) = match db.store.backend() {
        // Nothing listens on port 1.
        Backend::Postgres => ("postgres://gateway:hunter2@127.0.0.1:1/test".to_owned(), "127.0.0.1:1"),
        // A directory cannot be created under a regular file.
        Backend::Sqlite => {
            let file = tempfile::NamedTempFile::new().unwrap();
            let url = format!("sqlite://{}/sub/gateway.db", file.path().display());
            let started = Instant::now();
            let err = Store::connect(&url).await.expect_err("a database under a regular file");
            assert!(started.elapsed() < Duration::from_secs(10));
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("{}/sub/gateway.db", file.path().display())),
                "{msg}"
            );
            assert!(matches!(err, StoreError::Connect { .. }), "{err:?}");
            return;
        }
    };
    let started = Instant::now();
    let err = Store::connect(&url).await.expect_err("nothing listens on port 1");
    let took = started.elapsed();
    let msg = err.to_string();
    assert!(took < Duration::from_secs(10), "took {took:?}: {msg}");
    assert!(msg.contains(named), "{msg}");
    assert!(msg.contains("gateway:***@"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
    assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");

    let err = Store::connect("mysql://root:pw@localhost/gw")
        .await
        .expect_err("unsupported");
    assert!(matches!(err, StoreError::UnsupportedUrl { .. }), "{err:?}");
    assert!(!err.to_string().contains(":pw@"), "{err}");
}

pub(crate) async fn connections_are_listed_newest_first_and_closed_once(db: Db) {
    let s = &db.store;
    let first = s.open_connection(&connection(1, "node-a", T0)).await.unwrap();
    let second = s.open_connection(&connection(1, "node-a", T0 + 1_000)).await.unwrap();
    let mut third = connection(1, "node-b", T0 + 2_000);
    third.agent_version = None;
    let third = s.open_connection(&third).await.unwrap();
    let other_car = s.open_connection(&connection(2, "node-a", T0 + 500)).await.unwrap();
    assert!(first < second && second < third);

    s.close_connection(first, "kicked", T0 + 999).await.unwrap();
    // Closing again keeps the first time and reason.
    s.close_connection(first, "keep_alive_timeout", T0 + 5_000)
        .await
        .unwrap();
    let err = s
        .close_connection(ConnectionId(i64::MAX), "x", T0)
        .await
        .expect_err("unknown id");
    assert!(matches!(err, StoreError::UnknownConnection(_)), "{err:?}");

    let all = s.connections_of(&vin(1), 10).await.unwrap();
    assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), vec![third, second, first]);
    let newest = &all[0];
    assert_eq!(newest.connection.vin, vin(1));
    assert_eq!(newest.connection.node, "node-b");
    assert_eq!(newest.connection.cert_fingerprint, "sha256:0001");
    assert_eq!(newest.connection.agent_version, None);
    assert_eq!(newest.connection.remote_addr, "203.0.113.7:51234");
    assert_eq!(newest.connection.connected_at_ms, T0 + 2_000);
    assert_eq!(
        (newest.disconnected_at_ms, newest.disconnect_reason.as_deref()),
        (None, None)
    );
    let closed = &all[2];
    assert_eq!(closed.connection.agent_version.as_deref(), Some("0.1.0"));
    assert_eq!(
        (closed.disconnected_at_ms, closed.disconnect_reason.as_deref()),
        (Some(T0 + 999), Some("kicked"))
    );

    let two = s.connections_of(&vin(1), 2).await.unwrap();
    assert_eq!(two.iter().map(|r| r.id).collect::<Vec<_>>(), vec![third, second]);
    assert!(s.connections_of(&vin(3), 10).await.unwrap().is_empty());

    let open = s.open_connections().await.unwrap();
    assert_eq!(
        open.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![other_car, second, third]
    );
}

pub(crate) async fn closing_a_nodes_open_connections_spares_other_nodes(db: Db) {
    let s = &db.store;
    let a1 = s.open_connection(&connection(1, "node-a", T0)).await.unwrap();
    let a2 = s.open_connection(&connection(2, "node-a", T0 + 1)).await.unwrap();
    let a_closed = s.open_connection(&connection(3, "node-a", T0 + 2)).await.unwrap();
    s.close_connection(a_closed, "client_disconnect", T0 + 3).await.unwrap();
    let b1 = s.open_connection(&connection(4, "node-b", T0 + 4)).await.unwrap();

    assert_eq!(
        s.close_open_connections_of_node("node-a", "node_restarted", T0 + 10)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        s.close_open_connections_of_node("node-a", "node_restarted", T0 + 20)
            .await
            .unwrap(),
        0
    );

    let open = s.open_connections().await.unwrap();
    assert_eq!(open.iter().map(|r| r.id).collect::<Vec<_>>(), vec![b1]);
    for (n, id) in [(1, a1), (2, a2)] {
        let r = &s.connections_of(&vin(n), 1).await.unwrap()[0];
        assert_eq!(r.id, id);
        assert_eq!(
            (r.disconnected_at_ms, r.disconnect_reason.as_deref()),
            (Some(T0 + 10), Some("node_restarted"))
        );
    }
    let r = &s.connections_of(&vin(3), 1).await.unwrap()[0];
    assert_eq!(
        (r.disconnected_at_ms, r.disconnect_reason.as_deref()),
        (Some(T0 + 3), Some("client_disconnect"))
    );
}

pub(crate) async fn old_closed_connections_are_purged_and_open_ones_stay(db: Db) {
    let s = &db.store;
    let old = s.open_connection(&connection(1, "node-a", T0)).await.unwrap();
    s.close_connection(old, "clean", T0 + 10).await.unwrap();
    let recent = s.open_connection(&connection(1, "node-a", T0 + 20)).await.unwrap();
    s.close_connection(recent, "clean", T0 + 1_000).await.unwrap();
    let open = s.open_connection(&connection(1, "node-a", T0 + 30)).await.unwrap();
    assert_eq!(s.purge_connections(T0 + 500).await.unwrap(), 1);
    let left: Vec<_> = s
        .connections_of(&vin(1), 10)
        .await
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(left, vec![open, recent]);
}

pub(crate) async fn connections_recorded_in_one_batch_open_and_close_in_order(db: Db) {
    let s = &db.store;
    let close = |conn: u64, id: Option<ConnectionId>, reason: &str, at_ms: i64| ConnectionChange::Close {
        conn,
        id,
        reason: reason.into(),
        at_ms,
    };
    let opened = s
        .record_connections(vec![
            ConnectionChange::Open {
                conn: 1,
                connection: connection(1, "node-a", T0),
            },
            ConnectionChange::Open {
                conn: 2,
                connection: connection(2, "node-a", T0 + 1),
            },
            // Opened and closed within the batch: the close finds the id the open got.
            close(1, None, "clean", T0 + 2),
            // Never opened: skipped, and the rest is still recorded.
            close(99, None, "clean", T0 + 3),
        ])
        .await
        .unwrap();
    assert_eq!(opened.iter().map(|(c, _)| *c).collect::<Vec<_>>(), vec![1, 2]);
    let first = &s.connections_of(&vin(1), 1).await.unwrap()[0];
    assert_eq!(
        (first.id, first.disconnect_reason.as_deref()),
        (opened[0].1, Some("clean"))
    );
    assert_eq!(s.open_connections().await.unwrap().len(), 1);
    // A later batch closes by the id the first one returned.
    s.record_connections(vec![close(2, Some(opened[1].1), "keep-alive timeout", T0 + 10)])
        .await
        .unwrap();
    assert!(s.open_connections().await.unwrap().is_empty());
}

pub(crate) async fn many_concurrent_writes_all_commit(db: Db) {
    // Hundreds of writes in flight at once: on SQLite they share group commits; every one of
    // them must be durable and visible once it returned.
    let n = 400;
    let claims = futures::future::join_all((0..n).map(|i| {
        let s = db.store.clone();
        async move {
            let k = key(i % 7, &format!("k-{i}"));
            let claimed = s.ledger_claim(&k, &pay(b"x"), "gw-1/1", T0, LEASE, RETENTION).await;
            let completed = s
                .ledger_complete(&k, "gw-1/1", format!("r-{i}").as_bytes(), T0 + 1)
                .await;
            (claimed.unwrap(), completed.is_ok())
        }
    }))
    .await;
    assert!(claims.iter().all(|c| *c == (Claim::Fresh, true)));
    let again = db.another_node().await;
    for i in [0, n / 2, n - 1] {
        assert_eq!(
            again
                .ledger_claim(
                    &key(i % 7, &format!("k-{i}")),
                    &pay(b"x"),
                    "gw-2/1",
                    T0 + 2,
                    LEASE,
                    RETENTION
                )
                .await
                .unwrap(),
            Claim::Replay(format!("r-{i}").into_bytes())
        );
    }
    again.close().await;
}
