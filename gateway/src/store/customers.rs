//! Customers: one id that links a customer's vehicles (as owner or driver) and social
//! identities (from social login), looked up by any of them.
//!
//! A vehicle's ended links are kept (`unlinked_at_ms` set), so a customer's timeline can show
//! what happened while a vehicle was theirs and nothing after. A vehicle has at most one current
//! owner and any number of drivers; a social identity links to at most one customer. Both rules
//! are unique indexes too, so two gateway nodes racing cannot break them.
//!
//! Errors say which rule was broken, with the ids, and map onto gRPC codes
//! ([`StoreError::code`]): an unknown customer or link is [`StoreError::UnknownCustomer`] /
//! [`StoreError::UnknownLink`] (NOT_FOUND), an identity linked elsewhere
//! [`StoreError::IdentityTaken`] (ALREADY_EXISTS), a second current owner
//! [`StoreError::VehicleHasOwner`] (FAILED_PRECONDITION), a string beyond its bound
//! [`StoreError::Invalid`] (INVALID_ARGUMENT).

use proto::Vin;
use sqlx::Connection as _;

use super::{Store, StoreError, on_pool, on_writer, parse_vin, rows_changed_on};

/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 200;
/// Longest social identity provider name, in characters.
pub const MAX_PROVIDER_CHARS: usize = 64;
/// Longest social identity subject, in characters.
pub const MAX_SUBJECT_CHARS: usize = 255;

/// A customer's id: a UUID v4 assigned by the gateway, opaque to callers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CustomerId(pub String);

impl CustomerId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CustomerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a customer relates to a vehicle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VehicleRole {
    /// The vehicle's owner; a vehicle has at most one current owner.
    Owner,
    /// Someone who drives it; a vehicle may have several.
    Driver,
}

impl VehicleRole {
    /// The role as stored (`owner`, `driver`).
    pub fn as_str(self) -> &'static str {
        match self {
            VehicleRole::Owner => "owner",
            VehicleRole::Driver => "driver",
        }
    }

    fn parse(s: &str) -> Result<VehicleRole, StoreError> {
        match s {
            "owner" => Ok(VehicleRole::Owner),
            "driver" => Ok(VehicleRole::Driver),
            other => Err(StoreError::Corrupt(format!("vehicle role {other:?}"))),
        }
    }
}

/// A current link of a customer to a vehicle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VehicleLink {
    /// The vehicle.
    pub vin: Vin,
    /// The customer's role for it.
    pub role: VehicleRole,
    /// Since when (unix ms).
    pub linked_at_ms: i64,
}

/// A social identity (from social login) linked to a customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocialIdentity {
    /// The identity provider, e.g. `wechat`.
    pub provider: String,
    /// The provider's id of the person.
    pub subject: String,
    /// Since when (unix ms).
    pub linked_at_ms: i64,
}

/// A customer with their current links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    /// Their id.
    pub id: CustomerId,
    /// The name shown to operators.
    pub display_name: String,
    /// When the customer was created (unix ms).
    pub created_at_ms: i64,
    /// Current vehicle links, oldest first.
    pub vehicles: Vec<VehicleLink>,
    /// Linked social identities, oldest first.
    pub social_identities: Vec<SocialIdentity>,
}

/// Checks a text argument: at most `max` characters, no control characters, and not empty
/// unless `may_be_empty`.
fn check_text(what: &'static str, value: &str, max: usize, may_be_empty: bool) -> Result<(), StoreError> {
    let invalid = |problem: String| Err(StoreError::Invalid { what, problem });
    if value.is_empty() && !may_be_empty {
        return invalid("must not be empty".into());
    }
    if value.chars().count() > max {
        return invalid(format!("must be at most {max} characters"));
    }
    if value.chars().any(char::is_control) {
        return invalid("must not contain control characters".into());
    }
    Ok(())
}

fn check_identity(provider: &str, subject: &str) -> Result<(), StoreError> {
    check_text("social identity provider", provider, MAX_PROVIDER_CHARS, false)?;
    check_text("social identity subject", subject, MAX_SUBJECT_CHARS, false)
}

/// Looks at a sign-in this many times when other nodes keep claiming its identity first.
const SIGN_IN_ATTEMPTS: u32 = 3;

const CUSTOMER_EXISTS: &str = "SELECT id FROM customers WHERE id = $1";
const INSERT_CUSTOMER: &str = "INSERT INTO customers (id, display_name, created_at_ms) VALUES ($1, $2, $3)";
const CLAIM_IDENTITY: &str = "INSERT INTO customer_social_identities (provider, subject, customer_id, linked_at_ms) \
    VALUES ($1, $2, $3, $4) ON CONFLICT (provider, subject) DO NOTHING";
const IDENTITY_HOLDER: &str = "SELECT customer_id FROM customer_social_identities WHERE provider = $1 AND subject = $2";

/// Links the identity (`$provider`, `$subject`: `&String`s) to `$customer` (`&String`) unless
/// another customer holds it, on the write's transaction `$tx`: evaluates to `Ok` if
/// `$customer` holds it now, else [`StoreError::IdentityTaken`] naming the holder.
macro_rules! claim_identity {
    ($tx:expr, $op:expr, $provider:expr, $subject:expr, $customer:expr, $at_ms:expr) => {
        async {
            rows_changed_on!(&mut *$tx, $op, CLAIM_IDENTITY, $provider, $subject, $customer, $at_ms)?;
            // Whoever holds it now (this customer, or whoever won a race) decides the answer.
            let (holder,): (String,) = sqlx::query_as(IDENTITY_HOLDER)
                .bind($provider)
                .bind($subject)
                .fetch_one(&mut *$tx)
                .await
                .map_err(StoreError::query($op))?;
            match &holder == $customer {
                true => Ok(()),
                false => Err(StoreError::IdentityTaken {
                    provider: $provider.clone(),
                    subject: $subject.clone(),
                    customer: holder,
                }),
            }
        }
        .await
    };
}

/// Fails with [`StoreError::UnknownCustomer`] unless `id` exists, on the write's connection.
macro_rules! require_customer {
    ($conn:expr, $id:expr, $op:expr) => {{
        let found: Option<(String,)> = sqlx::query_as(CUSTOMER_EXISTS)
            .bind($id)
            .fetch_optional(&mut *$conn)
            .await
            .map_err(StoreError::query($op))?;
        if found.is_none() {
            return Err(StoreError::UnknownCustomer($id.to_owned()));
        }
    }};
}

/// Runs `$change` (a `Result<(), StoreError>` expression using `$tx`, the transaction, and
/// `$customer`, the id as text) on the write connection once the customer `$id` is known to
/// exist, commits, and evaluates to the customer as it is then. A `return` inside `$change`
/// ends the transaction without committing.
macro_rules! change_customer {
    ($store:expr, $id:expr, $op:expr, |$tx:ident, $customer:ident| $change:expr) => {{
        let $customer = $id.0.clone();
        on_writer!($store, $op, |conn| {
            // A savepoint on SQLite (inside the writer's transaction), a transaction on PostgreSQL.
            let mut $tx = conn.begin().await.map_err(StoreError::query($op))?;
            require_customer!($tx, $customer.as_str(), $op);
            $change?;
            $tx.commit().await.map_err(StoreError::query($op))
        })?;
        $store.existing_customer($id).await
    }};
}

/// `Ok` if the write ended a link (`changed` rows); otherwise the customer had no link `what`.
fn link_ended(changed: u64, customer: String, what: String) -> Result<(), StoreError> {
    match changed {
        0 => Err(StoreError::UnknownLink { customer, what }),
        _ => Ok(()),
    }
}

impl Store {
    /// Creates a customer with a new id and no links.
    pub async fn create_customer(&self, display_name: &str) -> Result<Customer, StoreError> {
        const OP: &str = "creating a customer";
        check_text("display name", display_name, MAX_DISPLAY_NAME_CHARS, true)?;
        let customer = Customer {
            id: CustomerId(uuid::Uuid::new_v4().to_string()),
            display_name: display_name.to_owned(),
            created_at_ms: crate::clock::now_ms(),
            vehicles: Vec::new(),
            social_identities: Vec::new(),
        };
        let (id, name, at) = (
            customer.id.0.clone(),
            customer.display_name.clone(),
            customer.created_at_ms,
        );
        super::rows_changed!(self, OP, INSERT_CUSTOMER, id, name, at)?;
        Ok(customer)
    }

    /// The customer with this id and their current links, if there is one.
    pub async fn customer(&self, id: &CustomerId) -> Result<Option<Customer>, StoreError> {
        const CUSTOMER: &str = "SELECT display_name, created_at_ms FROM customers WHERE id = $1";
        const VEHICLES: &str = "SELECT vin, role, linked_at_ms FROM customer_vehicles \
            WHERE customer_id = $1 AND unlinked_at_ms IS NULL ORDER BY linked_at_ms, id";
        const IDENTITIES: &str = "SELECT provider, subject, linked_at_ms FROM customer_social_identities \
            WHERE customer_id = $1 ORDER BY linked_at_ms, provider, subject";
        const OP: &str = "reading a customer";
        let found: Option<(String, i64)> = on_pool!(self, |pool| sqlx::query_as(CUSTOMER)
            .bind(id.as_str())
            .fetch_optional(pool)
            .await)
        .map_err(StoreError::query(OP))?;
        let Some((display_name, created_at_ms)) = found else {
            return Ok(None);
        };
        let vehicles: Vec<(String, String, i64)> = on_pool!(self, |pool| sqlx::query_as(VEHICLES)
            .bind(id.as_str())
            .fetch_all(pool)
            .await)
        .map_err(StoreError::query(OP))?;
        let identities: Vec<(String, String, i64)> = on_pool!(self, |pool| sqlx::query_as(IDENTITIES)
            .bind(id.as_str())
            .fetch_all(pool)
            .await)
        .map_err(StoreError::query(OP))?;
        Ok(Some(Customer {
            id: id.clone(),
            display_name,
            created_at_ms,
            vehicles: vehicles
                .into_iter()
                .map(|(vin, role, linked_at_ms)| {
                    Ok(VehicleLink {
                        vin: parse_vin(&vin)?,
                        role: VehicleRole::parse(&role)?,
                        linked_at_ms,
                    })
                })
                .collect::<Result<_, StoreError>>()?,
            social_identities: identities
                .into_iter()
                .map(|(provider, subject, linked_at_ms)| SocialIdentity {
                    provider,
                    subject,
                    linked_at_ms,
                })
                .collect(),
        }))
    }

    /// The customer of a vehicle: its current owner, else its most recently linked current
    /// driver; `None` when it has no current link.
    pub async fn customer_by_vin(&self, vin: &Vin) -> Result<Option<Customer>, StoreError> {
        const SQL: &str = "SELECT customer_id FROM customer_vehicles WHERE vin = $1 AND unlinked_at_ms IS NULL \
            ORDER BY CASE role WHEN 'owner' THEN 0 ELSE 1 END, linked_at_ms DESC, id DESC LIMIT 1";
        let found: Option<(String,)> = on_pool!(self, |pool| sqlx::query_as(SQL)
            .bind(vin.as_str())
            .fetch_optional(pool)
            .await)
        .map_err(StoreError::query("finding a vehicle's customer"))?;
        self.customer_found(found).await
    }

    /// The customer a social identity is linked to, if any. Bad arguments are
    /// [`StoreError::Invalid`].
    pub async fn customer_by_social(&self, provider: &str, subject: &str) -> Result<Option<Customer>, StoreError> {
        const SQL: &str = "SELECT customer_id FROM customer_social_identities WHERE provider = $1 AND subject = $2";
        check_identity(provider, subject)?;
        let found: Option<(String,)> = on_pool!(self, |pool| sqlx::query_as(SQL)
            .bind(provider)
            .bind(subject)
            .fetch_optional(pool)
            .await)
        .map_err(StoreError::query("finding a social identity's customer"))?;
        self.customer_found(found).await
    }

    /// The customer whose id a lookup `found`, if it found one.
    async fn customer_found(&self, found: Option<(String,)>) -> Result<Option<Customer>, StoreError> {
        match found {
            Some((id,)) => self.customer(&CustomerId(id)).await,
            None => Ok(None),
        }
    }

    /// The customer `id`, who must exist (for the link operations' answers).
    async fn existing_customer(&self, id: &CustomerId) -> Result<Customer, StoreError> {
        self.customer(id)
            .await?
            .ok_or_else(|| StoreError::UnknownCustomer(id.0.clone()))
    }

    /// Links `vin` to the customer in `role` from `at_ms` on, and returns the customer. Linking
    /// again in the same role changes nothing; in another role it is
    /// [`StoreError::AlreadyLinked`]; a second current owner is [`StoreError::VehicleHasOwner`].
    pub async fn link_vehicle(
        &self,
        id: &CustomerId,
        vin: &Vin,
        role: VehicleRole,
        at_ms: i64,
    ) -> Result<Customer, StoreError> {
        const CURRENT: &str =
            "SELECT role FROM customer_vehicles WHERE customer_id = $1 AND vin = $2 AND unlinked_at_ms IS NULL";
        const OWNER: &str =
            "SELECT customer_id FROM customer_vehicles WHERE vin = $1 AND role = 'owner' AND unlinked_at_ms IS NULL";
        // Refused by either partial unique index: one current link per (customer, vehicle), one
        // current owner per vehicle.
        const INSERT: &str = "INSERT INTO customer_vehicles (customer_id, vin, role, linked_at_ms) \
            VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
        const OP: &str = "linking a vehicle to a customer";
        let vin_text = vin.to_string();
        change_customer!(self, id, OP, |tx, customer| {
            // Insert first and explain a refusal after: another node linking the car at the
            // same instant then makes this an answer (the same link is no change), not an error.
            if rows_changed_on!(&mut *tx, OP, INSERT, &customer, &vin_text, role.as_str(), at_ms)? > 0 {
                Ok(())
            } else {
                let current: Option<(String,)> = sqlx::query_as(CURRENT)
                    .bind(&customer)
                    .bind(&vin_text)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(StoreError::query(OP))?;
                if let Some((current,)) = current {
                    let current = VehicleRole::parse(&current)?;
                    return match current == role {
                        true => Ok(()),
                        false => Err(StoreError::AlreadyLinked {
                            vin: vin_text,
                            customer,
                            role: current.as_str(),
                        }),
                    };
                }
                let owner: Option<(String,)> = sqlx::query_as(OWNER)
                    .bind(&vin_text)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(StoreError::query(OP))?;
                Err(StoreError::VehicleHasOwner {
                    vin: vin_text,
                    // Unlinked again since our insert: rare enough to name no one.
                    owner: owner.map_or_else(|| "(unlinked since)".to_owned(), |(owner,)| owner),
                })
            }
        })
    }

    /// Ends the customer's current link to `vin` at `at_ms` (kept as history) and returns the
    /// customer; no current link is [`StoreError::UnknownLink`].
    pub async fn unlink_vehicle(&self, id: &CustomerId, vin: &Vin, at_ms: i64) -> Result<Customer, StoreError> {
        const SQL: &str = "UPDATE customer_vehicles SET unlinked_at_ms = $3 \
            WHERE customer_id = $1 AND vin = $2 AND unlinked_at_ms IS NULL";
        const OP: &str = "unlinking a vehicle from a customer";
        let vin_text = vin.to_string();
        change_customer!(self, id, OP, |tx, customer| {
            let ended = rows_changed_on!(&mut *tx, OP, SQL, &customer, &vin_text, at_ms)?;
            link_ended(ended, customer, format!("vehicle {vin_text}"))
        })
    }

    /// A driver of `vin` signed in as `subject` at `provider` (an identity partner said so): the
    /// identity's customer gets the car as one they drive; else the car's customer gets the
    /// identity; else a new customer gets both. Returns that customer.
    ///
    /// Nodes sharing the database may link the same sign-in at the same instant: each step that
    /// can lose to another node's (the identity claimed first) looks again, so every node
    /// answers with the one customer that holds the identity and drives the car.
    pub async fn link_sign_in(
        &self,
        vin: &Vin,
        provider: &str,
        subject: &str,
        at_ms: i64,
    ) -> Result<Customer, StoreError> {
        check_identity(provider, subject)?;
        let mut attempt = 1;
        loop {
            if let Some(holder) = self.customer_by_social(provider, subject).await? {
                return self.driven_by(holder, vin, at_ms).await;
            }
            let claimed = match self.customer_by_vin(vin).await? {
                Some(customer) => self.link_social(&customer.id, provider, subject, at_ms).await,
                None => self.create_signed_in_customer(vin, provider, subject, at_ms).await,
            };
            match claimed {
                Ok(customer) => return self.driven_by(customer, vin, at_ms).await,
                // Another node claimed the identity between our look-up and our claim: look again.
                Err(StoreError::IdentityTaken { .. }) if attempt < SIGN_IN_ATTEMPTS => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// The customer, with `vin` linked as a car they drive unless it is linked already.
    async fn driven_by(&self, customer: Customer, vin: &Vin, at_ms: i64) -> Result<Customer, StoreError> {
        if customer.vehicles.iter().any(|v| &v.vin == vin) {
            return Ok(customer);
        }
        self.link_vehicle(&customer.id, vin, VehicleRole::Driver, at_ms).await
    }

    /// A new customer holding the social identity and driving `vin`, in one transaction: if
    /// another customer holds the identity already, nothing is created and the answer is
    /// [`StoreError::IdentityTaken`] with that customer.
    async fn create_signed_in_customer(
        &self,
        vin: &Vin,
        provider: &str,
        subject: &str,
        at_ms: i64,
    ) -> Result<Customer, StoreError> {
        const VEHICLE: &str =
            "INSERT INTO customer_vehicles (customer_id, vin, role, linked_at_ms) VALUES ($1, $2, 'driver', $3)";
        const OP: &str = "creating a customer for a sign-in";
        let id = CustomerId(uuid::Uuid::new_v4().to_string());
        let customer = id.0.clone();
        // Provider and subject are within their bounds, which together exceed a name's.
        let name: String = format!("{provider} {subject}")
            .chars()
            .take(MAX_DISPLAY_NAME_CHARS)
            .collect();
        let vin_text = vin.to_string();
        let (provider, subject) = (provider.to_owned(), subject.to_owned());
        on_writer!(self, OP, |conn| {
            let mut tx = conn.begin().await.map_err(StoreError::query(OP))?;
            rows_changed_on!(&mut *tx, OP, INSERT_CUSTOMER, &customer, &name, crate::clock::now_ms())?;
            // Held by another customer: dropping the transaction rolls the new one back.
            claim_identity!(tx, OP, &provider, &subject, &customer, at_ms)?;
            rows_changed_on!(&mut *tx, OP, VEHICLE, &customer, &vin_text, at_ms)?;
            tx.commit().await.map_err(StoreError::query(OP))
        })?;
        self.existing_customer(&id).await
    }

    /// Links a social identity to the customer and returns the customer. Linking it to the same
    /// customer again changes nothing; linked to another it is [`StoreError::IdentityTaken`].
    pub async fn link_social(
        &self,
        id: &CustomerId,
        provider: &str,
        subject: &str,
        at_ms: i64,
    ) -> Result<Customer, StoreError> {
        const OP: &str = "linking a social identity to a customer";
        check_identity(provider, subject)?;
        let (provider, subject) = (provider.to_owned(), subject.to_owned());
        change_customer!(self, id, OP, |tx, customer| {
            claim_identity!(tx, OP, &provider, &subject, &customer, at_ms)
        })
    }

    /// Unlinks a social identity from the customer and returns the customer; an identity not
    /// linked to this customer is [`StoreError::UnknownLink`].
    pub async fn unlink_social(&self, id: &CustomerId, provider: &str, subject: &str) -> Result<Customer, StoreError> {
        const SQL: &str =
            "DELETE FROM customer_social_identities WHERE provider = $1 AND subject = $2 AND customer_id = $3";
        const OP: &str = "unlinking a social identity from a customer";
        check_identity(provider, subject)?;
        let (provider, subject) = (provider.to_owned(), subject.to_owned());
        change_customer!(self, id, OP, |tx, customer| {
            let deleted = rows_changed_on!(&mut *tx, OP, SQL, &provider, &subject, &customer)?;
            link_ended(deleted, customer, format!("{provider} identity {subject:?}"))
        })
    }
}
