//! The idempotency ledger on both backends: claims, leases, take-overs, purges, races.

use super::*;

pub(crate) async fn ledger_first_claim_is_fresh_then_completion_is_replayed(db: Db) {
    let s = &db.store;
    let k = key(1, "pay-1");
    let req = pay(b"lot=42;minutes=60");
    assert_eq!(claim(s, &k, &req, "gw-a", T0).await, Claim::Fresh);
    s.ledger_complete(&k, "gw-a", b"receipt-1", T0 + 10).await.unwrap();
    // Same owner, another owner, later: all get the stored response.
    for owner in ["gw-a", "gw-b"] {
        assert_eq!(
            claim(s, &k, &req, owner, T0 + 20).await,
            Claim::Replay(b"receipt-1".to_vec())
        );
    }
    assert_eq!(
        claim(s, &k, &req, "gw-c", T0 + RETENTION - 1).await,
        Claim::Replay(b"receipt-1".to_vec())
    );
    // A second completion does not overwrite the first response.
    let err = s
        .ledger_complete(&k, "gw-a", b"receipt-2", T0 + 30)
        .await
        .expect_err("already completed");
    assert!(matches!(err, StoreError::NotLedgerOwner { .. }), "{err:?}");
    // Keys are per car, and the empty response is a response.
    let other_car = key(2, "pay-1");
    assert_eq!(claim(s, &other_car, &req, "gw-a", T0).await, Claim::Fresh);
    s.ledger_complete(&other_car, "gw-a", b"", T0 + 1).await.unwrap();
    assert_eq!(claim(s, &other_car, &req, "gw-a", T0 + 2).await, Claim::Replay(vec![]));
}

pub(crate) async fn ledger_refuses_a_key_reused_for_another_request(db: Db) {
    let s = &db.store;
    let (k, req) = claimed_by_gw_a(s).await;
    let original = Claim::Mismatch {
        method: "/parking.v1.ParkingPayment/Pay".to_owned(),
    };
    // In flight: another payload, another method.
    assert_eq!(claim(s, &k, &pay(b"lot=43"), "gw-a", T0 + 1).await, original);
    let other_method = RequestFingerprint::of("/parking.v1.ParkingPayment/Refund", b"lot=42");
    assert_eq!(claim(s, &k, &other_method, "gw-b", T0 + 1).await, original);
    // Completed: still refused, not replayed.
    s.ledger_complete(&k, "gw-a", b"receipt", T0 + 2).await.unwrap();
    assert_eq!(claim(s, &k, &pay(b"lot=43"), "gw-a", T0 + 3).await, original);
    // An abandoned claim whose lease is long gone is still not taken over by another request.
    let k2 = key(1, "pay-2");
    assert_eq!(claim(s, &k2, &req, "gw-a", T0).await, Claim::Fresh);
    assert_eq!(claim(s, &k2, &other_method, "gw-b", T0 + 10 * LEASE).await, original);
    assert_eq!(claim(s, &k2, &req, "gw-b", T0 + 10 * LEASE).await, Claim::Fresh);
}

pub(crate) async fn ledger_live_lease_is_in_flight_for_any_owner(db: Db) {
    let s = &db.store;
    let (k, req) = claimed_by_gw_a(s).await;
    assert_eq!(claim(s, &k, &req, "gw-a", T0 + 1).await, Claim::InFlight);
    assert_eq!(claim(s, &k, &req, "gw-a", T0 + LEASE - 1).await, Claim::InFlight);
    // Another process (another node, or this node restarted) while the lease is live: it may
    // still be calling the partner, so the retry waits instead of calling a second time.
    assert_eq!(claim(s, &k, &req, "gw-b", T0 + LEASE - 1).await, Claim::InFlight);
    // The lease is the claimer's: a retry asking with a shorter lease does not cut it short.
    assert_eq!(
        s.ledger_claim(&k, &req, "gw-b", T0 + LEASE - 1, 1, RETENTION)
            .await
            .unwrap(),
        Claim::InFlight
    );
    // The same owner after its own lease ran out gets it back.
    assert_eq!(claim(s, &k, &req, "gw-a", T0 + LEASE).await, Claim::Fresh);
    assert_eq!(claim(s, &k, &req, "gw-a", T0 + LEASE + 1).await, Claim::InFlight);
    s.ledger_complete(&k, "gw-a", b"ok", T0 + LEASE + 2).await.unwrap();
    assert_eq!(
        claim(s, &k, &req, "gw-b", T0 + LEASE + 3).await,
        Claim::Replay(b"ok".to_vec())
    );
    // A claimer with a long call holds the key that long, whatever lease the retries ask for.
    let long = key(1, "pay-long");
    assert_eq!(
        s.ledger_claim(&long, &req, "gw-a", T0, 3 * LEASE, RETENTION)
            .await
            .unwrap(),
        Claim::Fresh
    );
    assert_eq!(claim(s, &long, &req, "gw-b", T0 + 3 * LEASE - 1).await, Claim::InFlight);
    assert_eq!(claim(s, &long, &req, "gw-b", T0 + 3 * LEASE).await, Claim::Fresh);
}

pub(crate) async fn ledger_expired_lease_is_taken_over_and_old_owner_cannot_complete(db: Db) {
    let s = &db.store;
    // gw-a claims, then its process is killed.
    let (k, req) = claimed_by_gw_a(s).await;
    assert_eq!(claim(s, &k, &req, "gw-b", T0 + LEASE).await, Claim::Fresh);
    // gw-b now holds a live lease of its own.
    assert_eq!(claim(s, &k, &req, "gw-c", T0 + LEASE + 1).await, Claim::InFlight);
    // The old owner can neither complete nor release the claim it lost.
    let err = s
        .ledger_complete(&k, "gw-a", b"late", T0 + LEASE + 2)
        .await
        .expect_err("lost the claim");
    assert!(matches!(err, StoreError::NotLedgerOwner { .. }), "{err:?}");
    assert!(
        err.to_string().contains("pay-1") && err.to_string().contains("gw-a"),
        "{err}"
    );
    s.ledger_release(&k, "gw-a").await.unwrap();
    assert_eq!(claim(s, &k, &req, "gw-c", T0 + LEASE + 3).await, Claim::InFlight);
    s.ledger_complete(&k, "gw-b", b"receipt-b", T0 + LEASE + 4)
        .await
        .unwrap();
    assert_eq!(
        claim(s, &k, &req, "gw-a", T0 + LEASE + 5).await,
        Claim::Replay(b"receipt-b".to_vec())
    );
    // The retention period counts from the first claim, not the take-over.
    assert_eq!(s.ledger_purge(T0 + RETENTION).await.unwrap(), 1);
}

pub(crate) async fn ledger_expired_record_behaves_as_absent(db: Db) {
    let s = &db.store;
    let k = key(1, "pay-1");
    let retention = 60_000;
    assert_eq!(
        s.ledger_claim(&k, &pay(b"a"), "gw-a", T0, LEASE, retention)
            .await
            .unwrap(),
        Claim::Fresh
    );
    s.ledger_complete(&k, "gw-a", b"ra", T0 + 1).await.unwrap();
    assert_eq!(
        s.ledger_claim(&k, &pay(b"a"), "gw-a", T0 + retention - 1, LEASE, retention)
            .await
            .unwrap(),
        Claim::Replay(b"ra".to_vec())
    );
    // Expired (not yet purged): neither replayed nor a mismatch; the key starts over.
    let later = T0 + retention;
    assert_eq!(
        s.ledger_claim(&k, &pay(b"b"), "gw-b", later, LEASE, retention)
            .await
            .unwrap(),
        Claim::Fresh
    );
    assert_eq!(
        s.ledger_claim(&k, &pay(b"b"), "gw-b", later + 1, LEASE, retention)
            .await
            .unwrap(),
        Claim::InFlight
    );
    assert_eq!(
        s.ledger_claim(&k, &pay(b"a"), "gw-b", later + 1, LEASE, retention)
            .await
            .unwrap(),
        Claim::Mismatch {
            method: "/parking.v1.ParkingPayment/Pay".to_owned()
        }
    );
    // The old owner cannot complete the new claim.
    assert!(s.ledger_complete(&k, "gw-a", b"stale", later + 2).await.is_err());
    s.ledger_complete(&k, "gw-b", b"rb", later + 2).await.unwrap();
    assert_eq!(
        s.ledger_claim(&k, &pay(b"b"), "gw-a", later + 3, LEASE, retention)
            .await
            .unwrap(),
        Claim::Replay(b"rb".to_vec())
    );
    // An expired claim that was never completed is replaced too.
    let k2 = key(1, "pay-2");
    assert_eq!(
        s.ledger_claim(&k2, &pay(b"a"), "gw-a", T0, 10 * retention, retention)
            .await
            .unwrap(),
        Claim::Fresh
    );
    assert_eq!(
        s.ledger_claim(&k2, &pay(b"z"), "gw-b", T0 + retention, LEASE, retention)
            .await
            .unwrap(),
        Claim::Fresh
    );
}

pub(crate) async fn ledger_release_only_by_owner_and_never_a_stored_response(db: Db) {
    let s = &db.store;
    let (k, req) = claimed_by_gw_a(s).await;
    // Someone else's release does nothing.
    s.ledger_release(&k, "gw-b").await.unwrap();
    assert_eq!(claim(s, &k, &req, "gw-b", T0 + 1).await, Claim::InFlight);
    // The owner's release lets the next retry call the partner again, even with another payload.
    s.ledger_release(&k, "gw-a").await.unwrap();
    assert_eq!(claim(s, &k, &pay(b"lot=43"), "gw-b", T0 + 2).await, Claim::Fresh);
    let err = s.ledger_complete(&k, "gw-a", b"x", T0 + 3).await.expect_err("released");
    assert!(matches!(err, StoreError::NotLedgerOwner { .. }), "{err:?}");
    // A completed record is not released.
    s.ledger_complete(&k, "gw-b", b"done", T0 + 3).await.unwrap();
    s.ledger_release(&k, "gw-b").await.unwrap();
    assert_eq!(
        claim(s, &k, &pay(b"lot=43"), "gw-c", T0 + 4).await,
        Claim::Replay(b"done".to_vec())
    );
    // Releasing a key nobody claimed is fine.
    s.ledger_release(&key(9, "never"), "gw-a").await.unwrap();
}

pub(crate) async fn ledger_purge_deletes_only_expired_records(db: Db) {
    let s = &db.store;
    let req = pay(b"x");
    for (n, retention) in [(1, 1_000), (2, 2_000), (3, 3_000)] {
        let k = key(n, "k");
        assert_eq!(
            s.ledger_claim(&k, &req, "gw-a", T0, LEASE, retention).await.unwrap(),
            Claim::Fresh
        );
    }
    s.ledger_complete(&key(1, "k"), "gw-a", b"r1", T0 + 1).await.unwrap();
    assert_eq!(s.ledger_purge(T0 + 999).await.unwrap(), 0);
    assert_eq!(s.ledger_purge(T0 + 2_000).await.unwrap(), 2); // expires_at <= now, completed or not
    assert_eq!(s.ledger_purge(T0 + 2_000).await.unwrap(), 0);
    assert_eq!(
        s.ledger_claim(&key(3, "k"), &req, "gw-a", T0 + 2_001, LEASE, 3_000)
            .await
            .unwrap(),
        Claim::InFlight
    );
    assert_eq!(
        s.ledger_claim(&key(1, "k"), &req, "gw-b", T0 + 2_001, LEASE, 3_000)
            .await
            .unwrap(),
        Claim::Fresh
    );
}

/// Runs `n` claims of `k` at once, task `i` on `stores[i % len]` as owner `owner(i)`, at `now`.
pub(crate) async fn concurrent_claims(
    stores: &[Store],
    n: usize,
    k: &LedgerKey,
    owner: impl Fn(usize) -> String,
    now: i64,
) -> Vec<Claim> {
    let barrier = Arc::new(Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (store, k, owner, barrier) = (stores[i % stores.len()].clone(), k.clone(), owner(i), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .ledger_claim(&k, &pay(b"lot=42"), &owner, now, LEASE, RETENTION)
                    .await
                    .unwrap()
            })
        })
        .collect();
    outputs(tasks).await
}

pub(crate) fn count(claims: &[Claim], want: &Claim) -> usize {
    claims.iter().filter(|c| *c == want).count()
}

pub(crate) async fn ledger_concurrent_claims_of_a_new_key_give_exactly_one_fresh(db: Db) {
    let node_b = db.another_node().await;
    let stores = [db.store.clone(), node_b.clone()];
    for round in 0..5 {
        // One process: retries of one request arriving together.
        let k = key(1, &format!("same-owner-{round}"));
        let claims = concurrent_claims(&stores[..1], 16, &k, |_| "gw-a".to_owned(), T0).await;
        assert_eq!(
            (count(&claims, &Claim::Fresh), count(&claims, &Claim::InFlight)),
            (1, 15),
            "{claims:?}"
        );
        // Two nodes sharing the database, every caller its own process id.
        let k = key(2, &format!("many-owners-{round}"));
        let claims = concurrent_claims(&stores, 16, &k, |i| format!("gw-{i}"), T0).await;
        assert_eq!(
            (count(&claims, &Claim::Fresh), count(&claims, &Claim::InFlight)),
            (1, 15),
            "{claims:?}"
        );
    }
    node_b.close().await;
}

pub(crate) async fn ledger_concurrent_take_overs_give_exactly_one_fresh(db: Db) {
    let node_b = db.another_node().await;
    let stores = [db.store.clone(), node_b.clone()];
    for round in 0..5 {
        let k = key(1, &format!("take-over-{round}"));
        assert_eq!(
            db.store
                .ledger_claim(&k, &pay(b"lot=42"), "dead", T0, LEASE, RETENTION)
                .await
                .unwrap(),
            Claim::Fresh
        );
        let claims = concurrent_claims(&stores, 16, &k, |i| format!("gw-{i}"), T0 + LEASE).await;
        assert_eq!(
            (count(&claims, &Claim::Fresh), count(&claims, &Claim::InFlight)),
            (1, 15),
            "{claims:?}"
        );
        let err = db
            .store
            .ledger_complete(&k, "dead", b"late", T0 + LEASE)
            .await
            .expect_err("taken over");
        assert!(matches!(err, StoreError::NotLedgerOwner { .. }), "{err:?}");
    }
    node_b.close().await;
}

#[test]
pub(crate) fn request_fingerprint_is_the_payload_sha256() {
    let f = RequestFingerprint::of("/m", b"abc");
    assert_eq!(f.method, "/m");
    let hex: String = f.payload_sha256.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

pub(crate) async fn ledger_a_restarted_node_frees_its_predecessors_claims_only(db: Db) {
    let s = &db.store;
    let req = pay(b"lot=42");
    // gw-1's first process claims two keys and is killed; gw-10 (another node) holds a third.
    for (k, owner) in [
        (key(1, "a"), "gw-1/111"),
        (key(1, "b"), "gw-1/111"),
        (key(1, "c"), "gw-10/7"),
    ] {
        assert_eq!(claim(s, &k, &req, owner, T0).await, Claim::Fresh);
    }
    s.ledger_complete(&key(1, "b"), "gw-1/111", b"done", T0 + 1)
        .await
        .unwrap();
    assert_eq!(
        s.ledger_abandon_claims("gw-1/").await.unwrap(),
        1,
        "only the uncompleted claim of gw-1"
    );
    // Well inside the old lease, the restarted gw-1 takes its own stale claim over...
    assert_eq!(claim(s, &key(1, "a"), &req, "gw-1/222", T0 + 2).await, Claim::Fresh);
    // ...the completed one is still replayed, and gw-10's live claim is untouched.
    assert_eq!(
        claim(s, &key(1, "b"), &req, "gw-1/222", T0 + 3).await,
        Claim::Replay(b"done".to_vec())
    );
    assert_eq!(claim(s, &key(1, "c"), &req, "gw-1/222", T0 + 4).await, Claim::InFlight);
}
