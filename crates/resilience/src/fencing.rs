//! [`FencingToken`]: the one fencing token of the workspace, and the one check
//! that admits or refuses it.
//!
//! A lease cannot stop a paused process from acting late (a GC pause, a
//! SIGSTOP, a slow node between "am I still the holder?" and the write):
//! only the resource it writes to can, by remembering the highest token it
//! admitted and refusing anything older (Kleppmann's fencing argument).
//! lease-lock mints the tokens, state-store checks them on every fenced
//! write, testkit's `LockHistory` checks recorded histories with them; the
//! type lives here, in the ground floor, so that none of them depends on
//! another for it.
//!
//! The rule it keeps: **a token that cannot be compared is refused, never
//! admitted.**
//!
//! # Order
//!
//! A token is the Lease object's `metadata.uid`, its
//! `metadata.creationTimestamp` and the `spec.leaseTransitions` written by
//! the acquiring compare-and-swap.
//!
//! - **Same Lease object** (same uid): ordered by `transitions`. Every
//!   acquisition increments it in the write that sets the holder, so one
//!   object's tokens strictly increase.
//! - **Different objects** (the Lease was deleted — garbage-collected after
//!   its retention — and re-created): ordered by creation time. The API
//!   server sets `creationTimestamp` from its own clock in whole seconds,
//!   and lease-lock deletes a Lease only after it stayed idle far longer
//!   than a second, so a successor is created later and all its tokens
//!   order above every token of the object it replaced.
//! - **Incomparable**: different objects created within the same second
//!   (only when something else deleted a Lease and it was re-created at
//!   once), the same uid with two different creation times (a forged or
//!   corrupt token), or different objects when either creation time is
//!   unknown (a token stored before tokens carried it).
//!
//! ```
//! use resilience::fencing::{FencingToken, Rejected};
//!
//! let at = |s| jiff::Timestamp::from_second(s).unwrap();
//! let old = FencingToken::new("uid-1", at(1_000), 5);
//! let next = FencingToken::new("uid-1", at(1_000), 6);
//! // garbage-collected a day later and created anew: transitions start over
//! let recreated = FencingToken::new("uid-2", at(90_000), 0);
//!
//! let mut highest = None;
//! next.admit_into(&mut highest)?;
//! assert_eq!(old.admit_into(&mut highest), Err(Rejected::Stale));
//! recreated.admit_into(&mut highest)?; // a newer object: admitted
//! assert_eq!(next.admit_into(&mut highest), Err(Rejected::Stale)); // the old one is done
//! assert_eq!(highest, Some(recreated));
//!
//! let same_second = FencingToken::new("uid-3", at(90_000), 7);
//! assert_eq!(same_second.admit(highest.as_ref().unwrap()), Err(Rejected::Incomparable));
//! # Ok::<(), Rejected>(())
//! ```

use std::cmp::Ordering;
use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// A lock holder's fencing token: which Lease object it comes from (uid and
/// creation time) and which acquisition of it (`leaseTransitions`).
///
/// Pass it with every write made under the lock; the receiving store calls
/// [`admit_into`](Self::admit_into) with the highest token it has admitted.
/// `PartialOrd` follows the same order ([`partial_cmp`](PartialOrd::partial_cmp)
/// is `None` for incomparable tokens). Serialized as
/// `{"lease_uid", "transitions", "lease_created"}`; `lease_created` may be
/// absent in tokens stored by earlier builds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FencingToken {
    /// `metadata.uid` of the Lease object.
    pub lease_uid: String,
    /// `spec.leaseTransitions` written by the acquisition.
    pub transitions: u64,
    /// `metadata.creationTimestamp` of the Lease object (whole seconds, set
    /// by the API server): orders the tokens of successive objects. `None`
    /// only for a token stored before tokens carried it; such a token is
    /// comparable with tokens of its own object only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_created: Option<Timestamp>,
}

/// Why a [`FencingToken`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Rejected {
    /// Older than the highest token admitted: its holder lost the lock since.
    #[error(
        "the fencing token is older than the highest one admitted; its holder no longer holds the lock"
    )]
    Stale,
    /// Cannot be ordered against the highest token admitted (see the module
    /// documentation); refused because admitting it could admit a stale holder.
    #[error(
        "the fencing token cannot be ordered against the highest one admitted, so it is refused"
    )]
    Incomparable,
}

impl FencingToken {
    /// The token of acquisition `transitions` of the Lease object `lease_uid`
    /// created at `lease_created`.
    pub fn new(lease_uid: impl Into<String>, lease_created: Timestamp, transitions: u64) -> Self {
        Self {
            lease_uid: lease_uid.into(),
            transitions,
            lease_created: Some(lease_created),
        }
    }

    /// Whether a write under this token may be accepted by a resource whose
    /// highest admitted token is `highest`: `Ok` when this token is the same
    /// or newer, [`Rejected::Stale`] when older, [`Rejected::Incomparable`]
    /// when the two cannot be ordered.
    pub fn admit(&self, highest: &Self) -> Result<(), Rejected> {
        match self.order(highest)? {
            Ordering::Less => Err(Rejected::Stale),
            Ordering::Equal | Ordering::Greater => Ok(()),
        }
    }

    /// [`admit`](Self::admit) against the high-water mark `highest` (`None`:
    /// nothing admitted yet), raising it to this token when admitted. A token
    /// of the same acquisition that knows its creation time replaces one
    /// stored without it.
    pub fn admit_into(&self, highest: &mut Option<Self>) -> Result<(), Rejected> {
        let raise = match highest.as_ref() {
            None => true,
            Some(current) => match self.order(current)? {
                Ordering::Less => return Err(Rejected::Stale),
                Ordering::Greater => true,
                Ordering::Equal => current.lease_created.is_none() && self.lease_created.is_some(),
            },
        };
        if raise {
            *highest = Some(self.clone());
        }
        Ok(())
    }

    /// The order of `self` relative to `other`, where `Equal` means the same
    /// acquisition (a token stored without its creation time equals one of
    /// the same uid and transitions that has it).
    fn order(&self, other: &Self) -> Result<Ordering, Rejected> {
        let created = (self.lease_created, other.lease_created);
        if self.lease_uid == other.lease_uid {
            return match created {
                // One object has one creation time.
                (Some(a), Some(b)) if a != b => Err(Rejected::Incomparable),
                _ => Ok(self.transitions.cmp(&other.transitions)),
            };
        }
        match created {
            (Some(a), Some(b)) if a != b => Ok(a.cmp(&b)),
            _ => Err(Rejected::Incomparable),
        }
    }
}

impl PartialOrd for FencingToken {
    /// The fencing order; `None` for incomparable tokens, and for the same
    /// acquisition told once with and once without its creation time (equal
    /// for [`admit`](FencingToken::admit), not for `Eq`).
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.order(other).ok()? {
            Ordering::Equal if self != other => None,
            order => Some(order),
        }
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.lease_uid, self.transitions)?;
        if let Some(created) = self.lease_created {
            write!(f, "@{created}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    fn legacy(uid: &str, transitions: u64) -> FencingToken {
        FencingToken {
            lease_uid: uid.into(),
            transitions,
            lease_created: None,
        }
    }

    #[test]
    fn tokens_of_one_lease_object_order_by_transitions() {
        let (five, six) = (
            FencingToken::new("u1", at(10), 5),
            FencingToken::new("u1", at(10), 6),
        );
        assert!(five < six);
        assert_eq!(six.admit(&five), Ok(()));
        assert_eq!(six.admit(&six), Ok(()), "the holder writes again");
        assert_eq!(five.admit(&six), Err(Rejected::Stale));
    }

    #[test]
    fn a_recreated_lease_orders_after_every_token_of_the_one_it_replaced() {
        let old = FencingToken::new("u1", at(10), 5);
        let new = FencingToken::new("u2", at(86_410), 0);
        assert!(old < new);
        assert_eq!(new.admit(&old), Ok(()));
        assert_eq!(old.admit(&new), Err(Rejected::Stale));
    }

    /// The interleaving of the review: A holds L1 (u1, 5) and pauses; L1 is
    /// collected; B creates L2 (u2, 0) and writes; A wakes and writes. A
    /// token of an object the resource has not seen must not be taken as
    /// newer just because it is unknown.
    #[test]
    fn a_paused_holder_of_a_collected_lease_cannot_retire_its_successor() {
        let a = FencingToken::new("u1", at(1_000), 5);
        let b = FencingToken::new("u2", at(1_000 + 3_600), 0);
        let mut highest = None;
        b.admit_into(&mut highest).unwrap();
        assert_eq!(a.admit_into(&mut highest), Err(Rejected::Stale));
        assert_eq!(highest, Some(b.clone()));
        assert_eq!(b.admit_into(&mut highest), Ok(()), "B is not locked out");
    }

    #[test]
    fn tokens_that_cannot_be_ordered_are_refused_never_admitted() {
        let a = FencingToken::new("u1", at(10), 5);
        let same_second = FencingToken::new("u2", at(10), 0);
        let forged = FencingToken::new("u1", at(11), 9);
        for (offered, highest) in [
            (&same_second, &a),
            (&a, &same_second),
            (&forged, &a),
            (&legacy("u3", 1), &a),
            (&a, &legacy("u3", 1)),
        ] {
            assert_eq!(offered.admit(highest), Err(Rejected::Incomparable));
            assert_eq!(offered.partial_cmp(highest), None);
            let mut mark = Some(highest.clone());
            assert_eq!(offered.admit_into(&mut mark), Err(Rejected::Incomparable));
            assert_eq!(mark.as_ref(), Some(highest), "the mark is left alone");
        }
    }

    #[test]
    fn a_token_stored_without_its_creation_time_is_upgraded_by_its_own_object() {
        let mut highest = Some(legacy("u1", 4));
        let current = FencingToken::new("u1", at(10), 4);
        assert_eq!(current.admit_into(&mut highest), Ok(()));
        assert_eq!(highest, Some(current.clone()));
        assert_eq!(legacy("u1", 3).admit(&current), Err(Rejected::Stale));
        assert_eq!(legacy("u1", 4).partial_cmp(&current), None);
        assert_eq!(legacy("u1", 4).admit_into(&mut highest), Ok(()));
        assert_eq!(
            highest,
            Some(current),
            "never downgraded to the legacy form"
        );
    }

    #[test]
    fn a_first_token_is_admitted_and_the_mark_only_rises() {
        let mut highest = None;
        let six = FencingToken::new("u1", at(10), 6);
        six.admit_into(&mut highest).unwrap();
        six.admit_into(&mut highest).unwrap();
        assert_eq!(highest, Some(six));
    }

    #[test]
    fn serialized_tokens_round_trip_and_old_ones_still_read() {
        let token = FencingToken::new("u1", at(10), 6);
        let json = serde_json::to_string(&token).unwrap();
        assert_eq!(
            json,
            r#"{"lease_uid":"u1","transitions":6,"lease_created":"1970-01-01T00:00:10Z"}"#
        );
        assert_eq!(serde_json::from_str::<FencingToken>(&json).unwrap(), token);
        let old: FencingToken =
            serde_json::from_str(r#"{"lease_uid":"u1","transitions":6}"#).unwrap();
        assert_eq!(old, legacy("u1", 6));
        assert_eq!(token.to_string(), "u1/6@1970-01-01T00:00:10Z");
    }
}
