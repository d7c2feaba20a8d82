//! Customers on SQLite and PostgreSQL: linking vehicles and social identities, looking a
//! customer up by each key, and every refusal (unknown ids, conflicts, strings beyond their
//! bounds) with the gRPC code a caller answers with and the id in the message; sign-ins and
//! links made on two nodes (two stores on one database) at the same instant.

mod two_backends;

use gateway::routing::SignInLinker;
use gateway::routing::sign_ins::MAX_PENDING_SIGN_INS;
use gateway::store::{
    CustomerId, MAX_DISPLAY_NAME_CHARS, MAX_PROVIDER_CHARS, MAX_SUBJECT_CHARS, Store, StoreError, VehicleRole,
};
use proto::Vin;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const T0: i64 = 1_700_000_000_000;

fn vin(n: u32) -> Vin {
    Vin::parse(&format!("LSVAU2180N{n:07}")).expect("valid VIN")
}

#[track_caller]
fn refused(result: Result<impl std::fmt::Debug, StoreError>, code: tonic::Code, mentions: &str) -> StoreError {
    let e = result.expect_err("refused");
    assert_eq!(e.code(), code, "{e}");
    assert!(e.to_string().contains(mentions), "{e:?} should mention {mentions}");
    e
}

async fn a_customer_is_found_by_id_vin_and_social_identity(s: Store) {
    let c = s.create_customer("Li Wei").await.unwrap();
    assert!(c.vehicles.is_empty() && c.social_identities.is_empty());
    assert_eq!(uuid_version(&c.id), Some(4));
    assert_eq!(s.customer(&c.id).await.unwrap().unwrap(), c);

    let linked = s.link_vehicle(&c.id, &vin(1), VehicleRole::Owner, T0).await.unwrap();
    assert_eq!(linked.vehicles.len(), 1);
    assert_eq!(
        (
            linked.vehicles[0].vin.clone(),
            linked.vehicles[0].role,
            linked.vehicles[0].linked_at_ms
        ),
        (vin(1), VehicleRole::Owner, T0)
    );
    let linked = s
        .link_social(&c.id, "wechat", "o6_bmjrPTlm6_2sgVt7hMZOPfL2M", T0 + 1)
        .await
        .unwrap();
    assert_eq!(linked.social_identities[0].provider, "wechat");

    assert_eq!(s.customer_by_vin(&vin(1)).await.unwrap().unwrap().id, c.id);
    let by_social = s
        .customer_by_social("wechat", "o6_bmjrPTlm6_2sgVt7hMZOPfL2M")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_social, linked);
    assert_eq!(s.customer(&c.id).await.unwrap().unwrap(), linked);

    // Unknown keys find nobody.
    assert!(s.customer(&CustomerId("nobody".into())).await.unwrap().is_none());
    assert!(s.customer_by_vin(&vin(2)).await.unwrap().is_none());
    assert!(s.customer_by_social("wechat", "someone-else").await.unwrap().is_none());
}

fn uuid_version(id: &CustomerId) -> Option<usize> {
    uuid::Uuid::parse_str(id.as_str()).ok().map(|u| u.get_version_num())
}

async fn a_vehicle_has_one_owner_and_several_drivers(s: Store) {
    let (owner, driver, other) = (
        s.create_customer("owner").await.unwrap(),
        s.create_customer("driver").await.unwrap(),
        s.create_customer("other").await.unwrap(),
    );
    // Who is the vehicle's customer as links are added: (who is linked, as what, then whose it is).
    let steps = [
        (&driver, VehicleRole::Driver, &driver, "only a driver: that driver"),
        (&other, VehicleRole::Driver, &other, "the most recently linked driver"),
        (&owner, VehicleRole::Owner, &owner, "the owner first"),
    ];
    for (at, (linked, role, expected, why)) in (0..).zip(steps) {
        s.link_vehicle(&linked.id, &vin(1), role, T0 + 5 * at).await.unwrap();
        let customer = s.customer_by_vin(&vin(1)).await.unwrap().unwrap();
        assert_eq!(customer.id, expected.id, "{why}");
    }

    // A second current owner is refused, naming the first.
    let e = refused(
        s.link_vehicle(&other.id, &vin(1), VehicleRole::Owner, T0 + 20).await,
        tonic::Code::AlreadyExists,
        "driver",
    );
    assert!(matches!(e, StoreError::AlreadyLinked { .. }));
    let e = s.create_customer("buyer").await.unwrap();
    refused(
        s.link_vehicle(&e.id, &vin(1), VehicleRole::Owner, T0 + 20).await,
        tonic::Code::FailedPrecondition,
        owner.id.as_str(),
    );
    // Linking again in the same role changes nothing.
    let again = s
        .link_vehicle(&owner.id, &vin(1), VehicleRole::Owner, T0 + 30)
        .await
        .unwrap();
    assert_eq!(again.vehicles[0].linked_at_ms, T0 + 10);

    // The owner sells: unlinked, the buyer may own it; history stays but is not current.
    let sold = s.unlink_vehicle(&owner.id, &vin(1), T0 + 40).await.unwrap();
    assert!(sold.vehicles.is_empty());
    s.link_vehicle(&e.id, &vin(1), VehicleRole::Owner, T0 + 41)
        .await
        .unwrap();
    assert_eq!(s.customer_by_vin(&vin(1)).await.unwrap().unwrap().id, e.id);
    // The former owner may link again later (as a driver now).
    let back = s
        .link_vehicle(&owner.id, &vin(1), VehicleRole::Driver, T0 + 50)
        .await
        .unwrap();
    assert_eq!(back.vehicles[0].role, VehicleRole::Driver);
}

async fn unknown_customers_and_links_are_not_found_with_the_id(s: Store) {
    let ghost = CustomerId("8d4c1c1e-0000-4000-8000-000000000000".into());
    refused(
        s.link_vehicle(&ghost, &vin(1), VehicleRole::Owner, T0).await,
        tonic::Code::NotFound,
        ghost.as_str(),
    );
    refused(
        s.unlink_vehicle(&ghost, &vin(1), T0).await,
        tonic::Code::NotFound,
        ghost.as_str(),
    );
    refused(
        s.link_social(&ghost, "wechat", "x", T0).await,
        tonic::Code::NotFound,
        ghost.as_str(),
    );
    refused(
        s.unlink_social(&ghost, "wechat", "x").await,
        tonic::Code::NotFound,
        ghost.as_str(),
    );

    let c = s.create_customer("").await.unwrap();
    let e = refused(
        s.unlink_vehicle(&c.id, &vin(7), T0).await,
        tonic::Code::NotFound,
        vin(7).as_str(),
    );
    assert!(matches!(e, StoreError::UnknownLink { .. }), "{e:?}");
    refused(
        s.unlink_social(&c.id, "wechat", "x").await,
        tonic::Code::NotFound,
        "wechat",
    );
    // A link that ended is not current any more: unlinking it again is NOT_FOUND.
    s.link_vehicle(&c.id, &vin(7), VehicleRole::Driver, T0).await.unwrap();
    s.unlink_vehicle(&c.id, &vin(7), T0 + 1).await.unwrap();
    refused(
        s.unlink_vehicle(&c.id, &vin(7), T0 + 2).await,
        tonic::Code::NotFound,
        c.id.as_str(),
    );
}

async fn a_social_identity_links_to_one_customer(s: Store) {
    let (a, b) = (
        s.create_customer("a").await.unwrap(),
        s.create_customer("b").await.unwrap(),
    );
    s.link_social(&a.id, "wechat", "sub-1", T0).await.unwrap();
    // Again for the same customer: nothing changes.
    let again = s.link_social(&a.id, "wechat", "sub-1", T0 + 9).await.unwrap();
    assert_eq!(again.social_identities.len(), 1);
    assert_eq!(again.social_identities[0].linked_at_ms, T0);
    // For another: refused, naming the holder.
    let e = refused(
        s.link_social(&b.id, "wechat", "sub-1", T0).await,
        tonic::Code::AlreadyExists,
        a.id.as_str(),
    );
    assert!(matches!(e, StoreError::IdentityTaken { .. }));
    // The same subject at another provider is another identity.
    s.link_social(&b.id, "alipay", "sub-1", T0).await.unwrap();
    // Unlinked from a, b may take it.
    let a_now = s.unlink_social(&a.id, "wechat", "sub-1").await.unwrap();
    assert!(a_now.social_identities.is_empty());
    let b_now = s.link_social(&b.id, "wechat", "sub-1", T0 + 20).await.unwrap();
    assert_eq!(b_now.social_identities.len(), 2);
    assert_eq!(s.customer_by_social("wechat", "sub-1").await.unwrap().unwrap().id, b.id);
}

async fn strings_beyond_their_bounds_are_refused(s: Store) {
    refused(
        s.create_customer(&"n".repeat(MAX_DISPLAY_NAME_CHARS + 1)).await,
        tonic::Code::InvalidArgument,
        "display name",
    );
    refused(
        s.create_customer("tab\tname").await,
        tonic::Code::InvalidArgument,
        "control",
    );
    // Characters, not bytes: 200 Chinese characters are fine.
    s.create_customer(&"李".repeat(MAX_DISPLAY_NAME_CHARS)).await.unwrap();
    let c = s.create_customer("c").await.unwrap();
    refused(
        s.link_social(&c.id, &"p".repeat(MAX_PROVIDER_CHARS + 1), "s", T0).await,
        tonic::Code::InvalidArgument,
        "provider",
    );
    refused(
        s.link_social(&c.id, "wechat", &"s".repeat(MAX_SUBJECT_CHARS + 1), T0)
            .await,
        tonic::Code::InvalidArgument,
        "subject",
    );
    refused(
        s.link_social(&c.id, "", "s", T0).await,
        tonic::Code::InvalidArgument,
        "empty",
    );
    refused(
        s.customer_by_social("wechat", "").await,
        tonic::Code::InvalidArgument,
        "subject",
    );
    let at_bounds = s
        .link_social(
            &c.id,
            &"p".repeat(MAX_PROVIDER_CHARS),
            &"s".repeat(MAX_SUBJECT_CHARS),
            T0,
        )
        .await
        .unwrap();
    assert_eq!(at_bounds.social_identities.len(), 1);

    // A sign-in at the bounds makes a customer whose name (provider and subject) is cut to its own.
    let signed_in = s
        .link_sign_in(&vin(7), "wechat", &"w".repeat(MAX_SUBJECT_CHARS), T0)
        .await
        .expect("a sign-in within the bounds is linked");
    assert_eq!(signed_in.display_name.chars().count(), MAX_DISPLAY_NAME_CHARS);
    assert!(signed_in.display_name.starts_with("wechat www"), "{signed_in:?}");
}

/// An app polls a login again after its answer was lost, and the identity partner reports the
/// same sign-in twice at once: the car and the identity end up with one customer, and both
/// reports are linked before the linker's task ends (as at shutdown, before the store closes).
async fn a_sign_in_reported_twice_at_once_makes_one_customer(s: Store) {
    let (drain, tracker) = (CancellationToken::new(), TaskTracker::new());
    let linker = SignInLinker::spawn(s.clone(), MAX_PENDING_SIGN_INS, drain.clone(), &tracker);
    for _ in 0..2 {
        linker.report(&vin(1), "wechat".into(), "wx-1".into());
    }
    drain.cancel();
    tracker.close();
    tracker.wait().await;
    let by_identity = s.customer_by_social("wechat", "wx-1").await.unwrap().expect("linked");
    let by_car = s.customer_by_vin(&vin(1)).await.unwrap().expect("linked");
    assert_eq!(by_identity.id, by_car.id);
    assert_eq!(by_identity.vehicles.len(), 1, "{by_identity:?}");
    assert_eq!(by_identity.vehicles[0].role, VehicleRole::Driver);
}

/// Two gateway nodes sharing the database link the same sign-in at the same instant (an app's
/// retry reached the other node, or the partner reported to both): every link answers with the
/// one customer that holds the identity and drives the car, whoever got there first.
async fn one_sign_in_linked_on_two_nodes_at_once_makes_one_customer(db: two_backends::Db) {
    let node_b = db.another_node().await;
    let nodes = [db.store.clone(), node_b.clone()];
    for round in 0..10 {
        let (car, subject) = (vin(100 + round), format!("wx-{round}"));
        let links: Vec<_> = (0..8)
            .map(|i| {
                let (node, car, subject) = (nodes[i % 2].clone(), car.clone(), subject.clone());
                tokio::spawn(async move { node.link_sign_in(&car, "wechat", &subject, T0).await })
            })
            .collect();
        let mut linked = Vec::new();
        for link in links {
            linked.push(link.await.expect("the link task").expect("every link succeeds"));
        }
        let holder = db
            .store
            .customer_by_social("wechat", &subject)
            .await
            .unwrap()
            .expect("linked");
        assert!(linked.iter().all(|c| c.id == holder.id), "round {round}: {linked:?}");
        let driver = db.store.customer_by_vin(&car).await.unwrap().expect("linked");
        assert_eq!(driver.id, holder.id, "round {round}");
        assert_eq!(holder.vehicles.len(), 1, "round {round}: {holder:?}");
    }
    node_b.close().await;
}

/// Two nodes make the same link at the same instant: both are told it is made, and it is made
/// once. Two customers claiming to own the car at once: one does, the others are told who.
async fn links_made_on_two_nodes_at_once_answer_alike(db: two_backends::Db) {
    let node_b = db.another_node().await;
    let nodes = [db.store.clone(), node_b.clone()];
    for round in 0..5 {
        let car = vin(200 + round);
        let driver = db.store.create_customer("driver").await.unwrap();
        let links: Vec<_> = (0..8)
            .map(|i| {
                let (node, car, id) = (nodes[i % 2].clone(), car.clone(), driver.id.clone());
                tokio::spawn(async move { node.link_vehicle(&id, &car, VehicleRole::Driver, T0).await })
            })
            .collect();
        for link in links {
            let linked = link.await.unwrap().expect("the same link again is no error");
            assert_eq!(linked.vehicles.len(), 1, "round {round}: {linked:?}");
        }

        let mut owners = Vec::new();
        for _ in 0..4 {
            owners.push(db.store.create_customer("owner").await.unwrap().id);
        }
        let claims: Vec<_> = owners
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let (node, car, id) = (nodes[i % 2].clone(), car.clone(), id.clone());
                tokio::spawn(async move { node.link_vehicle(&id, &car, VehicleRole::Owner, T0).await })
            })
            .collect();
        let mut answers = Vec::new();
        for claim in claims {
            answers.push(claim.await.unwrap());
        }
        let owner = db.store.customer_by_vin(&car).await.unwrap().expect("an owner").id;
        for answer in answers {
            match answer {
                Ok(customer) => assert_eq!(customer.id, owner, "round {round}: only the owner is told yes"),
                Err(StoreError::VehicleHasOwner { owner: named, .. }) => assert_eq!(named, owner.0),
                Err(e) => panic!("round {round}: {e:?}"),
            }
        }
    }
    node_b.close().await;
}

/// Sign-ins reported faster than they are linked wait up to the bound; beyond it they are
/// dropped (and warned about), never blocking the request that reported them. On one thread, so
/// that the linking task cannot take any while they are reported (the bound is the queue's, the
/// same on either backend).
#[tokio::test(flavor = "current_thread")]
async fn sign_ins_beyond_the_queue_bound_are_dropped() {
    two_backends::on_sqlite(sign_ins_beyond_the_bound).await
}

async fn sign_ins_beyond_the_bound(s: Store) {
    let (drain, tracker) = (CancellationToken::new(), TaskTracker::new());
    let linker = SignInLinker::spawn(s.clone(), 4, drain.clone(), &tracker);
    // No await between the reports: the linking task cannot take any meanwhile.
    for subject in ["wx-1", "wx-2", "wx-3", "wx-4", "wx-5", "wx-6"] {
        linker.report(&vin(1), "wechat".into(), subject.into());
    }
    drain.cancel();
    tracker.close();
    tracker.wait().await;
    let customer = s.customer_by_vin(&vin(1)).await.unwrap().expect("linked");
    let subjects: Vec<&str> = customer.social_identities.iter().map(|i| i.subject.as_str()).collect();
    assert_eq!(subjects, ["wx-1", "wx-2", "wx-3", "wx-4"]);
}

on_both_backends!(
    a_sign_in_reported_twice_at_once_makes_one_customer,
    one_sign_in_linked_on_two_nodes_at_once_makes_one_customer,
    links_made_on_two_nodes_at_once_answer_alike,
    a_customer_is_found_by_id_vin_and_social_identity,
    a_vehicle_has_one_owner_and_several_drivers,
    unknown_customers_and_links_are_not_found_with_the_id,
    a_social_identity_links_to_one_customer,
    strings_beyond_their_bounds_are_refused,
);
