//! Revocations on both backends: the record in force follows the latest cut-off as a whole.

use super::*;

pub(crate) async fn a_later_revocation_moves_the_cut_off_and_an_earlier_one_changes_nothing(s: Store) {
    let car = vin(1);
    let first = s.revoke_vehicle(&car, T0, "stolen", "alice").await.unwrap();
    assert_eq!(
        (first.revoked_at_ms, first.reason.as_str(), first.revoked_by.as_str()),
        (T0, "stolen", "alice")
    );

    // Stamped earlier (another node's clock, a slower call): the record in force stays whole.
    let earlier = s.revoke_vehicle(&car, T0 - 10, "test", "bob").await.unwrap();
    assert_eq!(
        (
            earlier.revoked_at_ms,
            earlier.reason.as_str(),
            earlier.revoked_by.as_str()
        ),
        (T0, "stolen", "alice")
    );

    let later = s
        .revoke_vehicle(&car, T0 + 10, "re-issued key lost", "carol")
        .await
        .unwrap();
    assert_eq!(
        (later.revoked_at_ms, later.reason.as_str(), later.revoked_by.as_str()),
        (T0 + 10, "re-issued key lost", "carol")
    );
    let listed = s.revocations().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].reason, "re-issued key lost");
}
