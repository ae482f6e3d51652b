//! A member's role in a team (SPEC "Teams"): what they may do there.

use std::{fmt, str::FromStr};

/// `owner`, `admin` or `member`, as stored in `memberships.role`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything, billing included.
    Owner,
    /// Invitations and members, not billing.
    Admin,
    /// Uses the product.
    Member,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("a role is owner, admin or member")]
pub struct UnknownRole;

impl Role {
    pub const ALL: [Self; 3] = [Self::Owner, Self::Admin, Self::Member];

    pub fn parse(raw: &str) -> Result<Self, UnknownRole> {
        Self::ALL
            .into_iter()
            .find(|role| role.as_str() == raw)
            .ok_or(UnknownRole)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Member => "member",
        }
    }

    /// How pages name it.
    pub const fn in_words(self) -> &'static str {
        match self {
            Self::Owner => "Owner",
            Self::Admin => "Admin",
            Self::Member => "Member",
        }
    }

    /// Checkout and the customer portal are the owner's.
    pub const fn may_manage_billing(self) -> bool {
        matches!(self, Self::Owner)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(raw: &str) -> Result<Self, UnknownRole> {
        Self::parse(raw)
    }
}

super::text_column!(Role);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_nothing_else_is_one() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Ok(role));
        }
        for bad in ["", "Owner", "owner ", "root", "members"] {
            assert_eq!(Role::parse(bad), Err(UnknownRole), "{bad:?}");
        }
    }

    #[test]
    fn only_the_owner_manages_billing() {
        assert!(Role::Owner.may_manage_billing());
        assert!(!Role::Admin.may_manage_billing());
        assert!(!Role::Member.may_manage_billing());
        assert_eq!(Role::Admin.in_words(), "Admin");
    }
}
